//! Text tables in the style of the platform CLI (`neuro secret ls`).

/// A table with a header and a `╶───╴` rule:
///
/// ```text
///   KEY
/// ╶─────────────╴
///   aws-key
/// ```
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(widths[i] - c.chars().count()));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    let rule = widths.iter().sum::<usize>() + 2 * widths.len();
    out.push('╶');
    out.push_str(&"─".repeat(rule));
    out.push_str("╴\n");
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Rows without a header, columns aligned: `URI ACTION [USER]`.
pub fn plain(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < r.len() {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 1));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_seed_page() {
        let rows: Vec<Vec<String>> = ["aws-key", "gcp-key", "wandb-token"]
            .iter()
            .map(|k| vec![k.to_string()])
            .collect();
        assert_eq!(
            render(&["KEY"], &rows),
            "  KEY\n╶─────────────╴\n  aws-key\n  gcp-key\n  wandb-token\n"
        );
    }

    #[test]
    fn plain_rows_align() {
        let rows = vec![
            vec!["secret://c/bob".to_string(), "manage".to_string()],
            vec!["secret://c/alice/k".to_string(), "read".to_string()],
        ];
        assert_eq!(
            plain(&rows),
            "secret://c/bob     manage\nsecret://c/alice/k read\n"
        );
    }
}
