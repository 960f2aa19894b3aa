//! `qorch serve` over the store of a real run: the API answers on the address it prints, a
//! non-loopback address without a token is refused, and Ctrl-C stops it cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;

mod support;
use support::qorch;

/// A plain HTTP/1.1 GET: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    exchange(TcpStream::connect(addr).unwrap(), addr, path)
}

fn exchange(mut s: impl Read + Write, addr: &str, path: &str) -> (u16, String) {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_on_the_address_it_prints_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "[[test]]\nid = \"a\"\nscript = \"echo hi\"\n").unwrap();
    let out = dir.path().join("out");
    let status = qorch()
        .arg("run")
        .arg(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--progress", "quiet"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("latest/report.json")).unwrap()).unwrap();
    let run_id = report["run_id"].as_str().unwrap();

    let mut child = qorch()
        .arg("serve")
        .arg("--out")
        .arg(&out)
        .args(["--bind", "127.0.0.1:0"])
        .env_remove("QORCH_API_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_owned();
    let (code, body) = get(&addr, "/api/v1/runs");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(run_id), "{body}");
    let (code, body) = get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());

    // A Unix socket instead: private to its owner, answered, refused to a second server while
    // the first lives, removed when it stops.
    let socket = dir.path().join("api.sock");
    let serve_unix = || {
        qorch()
            .arg("serve")
            .arg("--out")
            .arg(&out)
            .arg("--unix-socket")
            .arg(&socket)
            .env_remove("QORCH_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = serve_unix();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&socket.display().to_string()), "{line}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let unix = || std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let (code, body) = exchange(unix(), "localhost", "/api/v1/runs");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(run_id), "{body}");
    let second = serve_unix().wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("api.sock") && stderr.contains("listens there"),
        "{stderr}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket file outlived its server");
    // Something that is not a socket at the path: refused, left alone.
    std::fs::write(&socket, "mine").unwrap();
    let o = serve_unix().wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "mine");

    // Another address without a token: refused, naming the fix.
    let o = qorch()
        .arg("serve")
        .arg("--out")
        .arg(&out)
        .args(["--bind", "0.0.0.0:0"])
        .env_remove("QORCH_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("token"), "{stderr}");
    // Not a store.
    let o = qorch()
        .args(["serve", "--store"])
        .arg(Path::new(dir.path()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
