//! The `lb` binary's offline commands: `lb config check` gives the agent's own verdict on a
//! file, with no agent and no root needed, and exit code 2 when it refuses it.

use std::process::Command;

use lb_integration::lab::workspace_bin;

/// Runs `lb config check` on `text`; returns (exit code, stdout, stderr).
fn check(name: &str, text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("lb-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(workspace_bin("lb").unwrap())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_accepts_a_good_file_and_names_what_is_wrong_in_a_bad_one() {
    let (code, out, _) = check(
        "good",
        "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\n",
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("ok (1 services, 0 forwards, 0 PIPs, 0 outbound rules, 2 backends)"),
        "{out}"
    );
    let (code, _, err) = check(
        "bad",
        "[[service]]\nvip = \"203.0.113.10:80/tcp\"\ntable_size = \"65537\"\n",
    );
    assert_eq!(code, 2, "refused: invalid input");
    assert!(
        err.contains("lb.toml:3:14: service[0].table_size: invalid type: string \"65537\", expected a whole number"),
        "{err}"
    );
    let (code, _, err) = check(
        "outbound",
        "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\"]\n\n[[outbound]]\nname = \"web\"\nfrontends = [\"203.0.113.10\"]\nservices = [\"203.0.113.10:80/tcp\"]\nports_per_backend = 65536\n",
    );
    assert_eq!(code, 2, "refused: invalid input");
    assert!(
        err.contains("lb.toml:5:1: outbound[0]: rule web: ports_per_backend 65536: must be a multiple of 8 from 8 to 64512"),
        "{err}"
    );
    let (code, _, err) = check("empty", "");
    assert_eq!(code, 0, "an empty file is a valid empty config: {err}");
}

/// `lb --version` names the build's commit and its map layout version (what its pins must
/// match).
#[test]
fn version_names_the_commit_and_the_map_layout() {
    let out = Command::new(workspace_bin("lb").unwrap())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let layout = format!("{:#018x}", lb_common::consts::map_layout_version());
    assert_eq!(text, format!("lb {}\n", lb_userspace::cli::version()));
    assert!(
        text.contains("(commit ")
            && text.contains(&format!(
                "map layout {layout}, api {})",
                lb_userspace::api::API_VERSION
            )),
        "{text}"
    );
}

/// With `-o json`, the offline commands' answers and every error (clap's, the config check's,
/// no agent) are one JSON object on stdout, with the kind's exit code.
#[test]
fn json_output_covers_errors_and_offline_commands() {
    let lb = workspace_bin("lb").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&lb).args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?}"));
        (out.status.code(), v)
    };
    let (code, v) = run(&["vip", "add", "203.0.113.999:80/tcp", "-o", "json"]);
    assert_eq!(code, Some(2));
    assert_eq!(v["error"]["kind"], "invalid", "{v}");
    assert_eq!(v["error"]["field"], "<SERVICE>", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("203.0.113.999"),
        "{v}"
    );
    // An outbound rule is checked before anything is sent: exit 2, the reason named.
    let (code, v) = run(&[
        "outbound",
        "add",
        "web",
        "--frontend",
        "203.0.113.10",
        "--backend",
        "192.0.2.11",
        "--ports-per-backend",
        "12",
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ports_per_backend 12: must be a multiple of 8"),
        "{v}"
    );
    let (code, v) = run(&["--output=json", "stats", "--socket", "/nonexistent/lb.sock"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["error"]["kind"], "unreachable", "{v}");
    let dir = std::env::temp_dir().join(format!("lb-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[service]]\nvip = \"203.0.113.10:80/tcp\"\ntable_size = 0\n",
    )
    .unwrap();
    let (code, v) = run(&["config", "check", bad.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, Some(2));
    assert_eq!(v["error"]["field"], "service[0].table_size", "{v}");
    assert_eq!(v["error"]["line"], 3, "{v}");
    let (code, v) = run(&["completions", "bash", "-o", "json"]);
    assert_eq!(code, Some(0));
    assert!(v["script"].as_str().unwrap().contains("complete"), "{v}");
    let (code, v) = run(&[
        "man",
        "--dir",
        dir.join("man").to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(0));
    assert!(v["pages"].as_array().unwrap().len() > 10, "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
    // Without -o json, help is text as before.
    let out = Command::new(&lb).args(["vip", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: lb vip"));
}

/// The completion scripts parse, and the man pages render without a warning.
#[test]
fn completions_parse_and_man_pages_render() {
    let lb = workspace_bin("lb").unwrap();
    let dir = std::env::temp_dir().join(format!("lb-cli-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bash = dir.join("lb.bash");
    let out = Command::new(&lb)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&bash, &out.stdout).unwrap();
    let n = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(n.status.success(), "bash -n: {n:?}");
    let man = dir.join("man");
    assert!(
        Command::new(&lb)
            .args(["man", "--dir"])
            .arg(&man)
            .status()
            .unwrap()
            .success()
    );
    let mut pages = 0;
    for p in std::fs::read_dir(&man).unwrap() {
        let p = p.unwrap().path();
        let o = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&p)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(
            o.status.success() && !o.stdout.is_empty(),
            "{}: {o:?}",
            p.display()
        );
        assert!(
            o.stderr.is_empty(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        pages += 1;
    }
    assert!(pages > 10, "{pages} pages");
    std::fs::remove_dir_all(&dir).unwrap();
}
