//! A probe that end-to-end tests run inside a job's mount namespace (via nsenter) to try file
//! operations and report the outcome as an errno name.
//!
//!   fsprobe try OP PATH [ARG]   OP: open write append creat trunc unlink rename chmod mkdir
//!   fsprobe stat PATH           prints "UID GID MODE SIZE" (mode in octal)
//!   fsprobe hold PATH           opens, prints "first HEX", waits for a stdin line, then reads
//!                               the same handle again from offset 0 and prints "second HEX"

use std::io::{BufRead as _, Read as _, Seek as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

fn errno(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map(|n| format!("{:?}", nix::errno::Errno::from_raw(n)))
        .unwrap_or_else(|| e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match a(0) {
        "try" => {
            let (op, path, arg) = (a(1), a(2), a(3));
            let mut o = std::fs::OpenOptions::new();
            let r: std::io::Result<()> = match op {
                "open" => o.read(true).open(path).map(drop),
                "write" => o.write(true).open(path).map(drop),
                "append" => o.append(true).open(path).map(drop),
                "creat" => o.write(true).create_new(true).open(path).map(drop),
                "trunc" => o.write(true).truncate(true).open(path).map(drop),
                "unlink" => std::fs::remove_file(path),
                "rename" => std::fs::rename(path, arg),
                "chmod" => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)),
                "mkdir" => std::fs::create_dir(path),
                other => panic!("unknown op {other}"),
            };
            println!(
                "{}",
                r.map(|()| "ok".to_string()).unwrap_or_else(|e| errno(&e))
            );
        }
        "stat" => match std::fs::metadata(a(1)) {
            Ok(m) => println!(
                "{} {} {:o} {}",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777,
                m.size()
            ),
            Err(e) => println!("{}", errno(&e)),
        },
        "hold" => {
            let mut f = std::fs::File::open(a(1)).expect("open");
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).expect("first read");
            println!("first {}", hex(&buf));
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
            f.rewind().expect("rewind");
            buf.clear();
            f.read_to_end(&mut buf).expect("second read");
            println!("second {}", hex(&buf));
        }
        other => panic!("unknown command {other:?}"),
    }
}
