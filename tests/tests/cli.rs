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
        out.contains("ok (1 services, 0 forwards, 0 PIPs, 2 backends)"),
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
        text.contains("(commit ") && text.contains(&format!("map layout {layout})")),
        "{text}"
    );
}
