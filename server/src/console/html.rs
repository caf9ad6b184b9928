//! HTML building blocks: escaping and the page frame (navigation, user name, log out).

use std::fmt::Write as _;

/// `s` escaped for HTML text and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · neuro secrets</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>",
        esc(title)
    );
}

/// The log-in page, with `error` in an alert.
pub fn login_page(error: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, "Log in");
    out.push_str(
        "<body><main class=\"login\"><h1>neuro secrets</h1>\
         <form method=\"post\" action=\"/login\" class=\"card\">\
         <label for=\"token\">Token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required \
         aria-describedby=\"token-help\">\
         <p id=\"token-help\" class=\"help\">Your user token (nst.…). It opens a session; \
         the browser keeps only the session's id.</p>",
    );
    if let Some(e) = error {
        let _ = write!(out, "<p role=\"alert\" class=\"error\">{}</p>", esc(e));
    }
    out.push_str("<button type=\"submit\">Log in</button></form></main></body></html>");
    out
}

/// A page of the console for `user`: navigation, then `main`.
pub fn page(title: &str, current: &str, user: &str, csrf: &str, main: &str) -> String {
    let mut out = String::with_capacity(main.len() + 2048);
    head(&mut out, title);
    let _ = write!(
        out,
        "<body data-csrf=\"{}\"><header><nav aria-label=\"Console\">",
        esc(csrf)
    );
    for (href, label) in [
        ("/secrets", "Secrets"),
        ("/shared", "Shared"),
        ("/dashboard", "Dashboard"),
    ] {
        let cur = if label == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(out, "<a href=\"{href}\"{cur}>{label}</a>");
    }
    let _ = write!(
        out,
        "</nav><span class=\"who\">Logged in as <strong id=\"user-name\">{}</strong></span>\
         <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{}\"><button type=\"submit\">Log out</button></form></header><main>",
        esc(user),
        esc(csrf)
    );
    out.push_str(main);
    out.push_str("</main></body></html>");
    out
}
