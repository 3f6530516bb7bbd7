//! Shell completions (`lb completions bash|zsh|fish`) and man pages (`lb man --dir DIR`),
//! generated from the CLI's own clap definition, so they cannot drift from it.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::Cli;

/// The completion script of `shell`.
#[must_use]
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lb", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `lb.1` and one page per subcommand (`lb-vip-add.1`, ...) into `dir`; returns the
/// files written.
///
/// # Errors
/// The directory cannot be created or written.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_pages(&Cli::command(), "lb", dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // Each page is titled by its full command name, as `git-commit(1)` is.
    let page = cmd.clone().name(name.to_owned());
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    std::fs::write(&path, buf)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let s = completions(shell);
            for word in ["vip", "backend", "flows", "reload", "peer"] {
                assert!(s.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn a_page_per_command() {
        let dir = std::env::temp_dir().join(format!("lb-man-{}", std::process::id()));
        let pages = man_pages(&dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for n in [
            "lb.1",
            "lb-agent.1",
            "lb-vip-add.1",
            "lb-peer-attach.1",
            "lb-flows.1",
        ] {
            assert!(names.iter().any(|x| x == n), "no {n} in {names:?}");
        }
        let top = std::fs::read_to_string(dir.join("lb-vip-add.1")).unwrap();
        assert!(top.contains(".TH lb-vip-add"), "{top}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
