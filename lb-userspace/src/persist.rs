//! The state file: the desired state, saved after every change, so a restarted agent keeps
//! what the CLI added.
//!
//! The file is written in config-file format ([`State::to_toml`]) and read back through the
//! config parser, so it gets the same validation. Its first line records a digest of the config
//! file it grew from. At start:
//! * no state file: the config file is the state;
//! * a state file whose digest matches the current config file: the state file wins (it is
//!   the config plus every CLI change since);
//! * a state file from another config (the config was edited while the agent was down): the
//!   config file wins, and the old state file is replaced. SIGHUP also applies the config.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::state::State;

/// Default location of the state file (a regular file: bpffs cannot hold one).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/lb/state.toml";

const HEADER: &str = "# lb agent state; config-digest = ";

/// FNV-1a over the config text: enough to notice that the config file changed.
#[must_use]
pub fn digest(config_text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in config_text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Where the initial state came from (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    ConfigFile,
    StateFile,
    ConfigChangedSinceStateFile,
}

/// Picks the initial state (see the module doc).
///
/// # Errors
/// A state file that exists but cannot be read or does not validate (never ignored silently:
/// move it away to start from the config).
pub fn initial_state(
    path: &Path,
    config_digest: &str,
    (from_config, agent): (State, crate::config::AgentSettings),
) -> anyhow::Result<(State, Source)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((from_config, Source::ConfigFile));
        }
        Err(e) => return Err(e).with_context(|| format!("reading state file {}", path.display())),
    };
    let saved_digest = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(HEADER))
        .map(str::trim);
    if saved_digest != Some(config_digest) {
        return Ok((from_config, Source::ConfigChangedSinceStateFile));
    }
    let cfg = crate::config::parse_state(&path.display().to_string(), &text, agent).with_context(
        || {
            format!(
                "state file {} is invalid; move it away to start from the config",
                path.display()
            )
        },
    )?;
    Ok((State::from_config(&cfg), Source::StateFile))
}

/// Saves the state atomically (write a temp file, then rename), mode 0600.
///
/// # Errors
/// The directory or file cannot be written.
pub fn save(path: &Path, config_digest: &str, state: &State) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp: PathBuf = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    write!(
        f,
        "{HEADER}{config_digest}\n# Written by the agent after every change. Edit the config file instead.\n\n{}",
        state.to_toml()
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentSettings, ServiceSettings};

    #[test]
    fn state_file_wins_until_the_config_changes() {
        let dir = std::env::temp_dir().join(format!("lb-persist-{}", std::process::id()));
        let path = dir.join("state.toml");
        let cfg_text = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\n";
        let from_config = State::from_config(&crate::config::parse("c", cfg_text).unwrap());
        let d = digest(cfg_text);
        assert_eq!(
            initial_state(&path, &d, (from_config.clone(), AgentSettings::default()))
                .unwrap()
                .1,
            Source::ConfigFile
        );

        let mut changed = from_config.clone();
        changed
            .apply(&crate::state::Command::VipAdd {
                service: "203.0.113.10:53/udp".parse().unwrap(),
                settings: ServiceSettings::default(),
            })
            .unwrap();
        save(&path, &d, &changed).unwrap();
        let (s, src) =
            initial_state(&path, &d, (from_config.clone(), AgentSettings::default())).unwrap();
        assert_eq!((s, src), (changed, Source::StateFile));

        let (s, src) = initial_state(
            &path,
            &digest("edited"),
            (from_config.clone(), AgentSettings::default()),
        )
        .unwrap();
        assert_eq!(
            (s, src),
            (from_config.clone(), Source::ConfigChangedSinceStateFile)
        );

        std::fs::write(&path, format!("{HEADER}{d}\n[[service]]\nvip = \"bad\"\n")).unwrap();
        let e = initial_state(&path, &d, (from_config, AgentSettings::default())).unwrap_err();
        assert!(format!("{e:#}").contains("move it away"), "{e:#}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A state file holds no `[agent]` section: it is read with the config's agent settings,
    /// so a floating-IP service (which needs the config's outer source) survives a restart.
    #[test]
    fn a_floating_ip_service_survives_the_state_file() {
        let dir = std::env::temp_dir().join(format!("lb-persist-fip-{}", std::process::id()));
        let path = dir.join("state.toml");
        let cfg_text = "[agent]\nencap_source4 = \"192.0.2.1\"\n\n[[service]]\nvip = \"203.0.113.10:80/tcp\"\nfloating_ip = \"gue\"\nprobe = \"tcp\"\nprobe_via = \"tunnel\"\nbackends = [\"192.0.2.11\"]\n";
        let cfg = crate::config::parse("c", cfg_text).unwrap();
        let from_config = State::from_config(&cfg);
        let d = digest(cfg_text);
        save(&path, &d, &from_config).unwrap();
        let (s, src) = initial_state(&path, &d, (from_config.clone(), cfg.agent)).unwrap();
        assert_eq!((&s, src), (&from_config, Source::StateFile));
        let spec = "203.0.113.10:80/tcp".parse().unwrap();
        assert_eq!(
            s.services[&spec].settings.floating_ip,
            crate::spec::FloatingIp::Gue
        );
        assert_eq!(
            s.services[&spec].settings.probe_via,
            crate::spec::ProbeVia::Tunnel
        );
        // Without the config's settings the same file is refused, naming the setting.
        let e = initial_state(&path, &d, (from_config, AgentSettings::default())).unwrap_err();
        assert!(format!("{e:#}").contains("agent.encap_source4"), "{e:#}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
