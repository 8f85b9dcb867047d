//! Where the CLI finds its relay, key, CA and source address: flags, then the
//! environment (`SESAME_RELAY`, `SESAME_API_KEY`, `SESAME_CA`, `SESAME_BIND`), then
//! `~/.config/sesame/config.toml`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The settings file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    relay: Option<String>,
    api_key: Option<String>,
    ca: Option<PathBuf>,
    bind: Option<IpAddr>,
}

/// Settings given as flags; `None` falls back to the environment, then the file.
#[derive(Default)]
pub struct Flags {
    /// `--relay`.
    pub relay: Option<String>,
    /// `--api-key`.
    pub api_key: Option<String>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--bind`.
    pub bind: Option<IpAddr>,
}

/// Resolved settings.
pub struct Config {
    /// `https://host:port` of the relay.
    pub relay: String,
    /// The user's API key.
    pub api_key: String,
    /// CA file; `None` uses the system's trusted roots.
    pub ca: Option<PathBuf>,
    /// Local address of the connections to the relay (`ssh -b`); `None` lets the
    /// system choose.
    pub bind: Option<IpAddr>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("relay", &self.relay)
            .field("api_key", &"<hidden>")
            .field("ca", &self.ca)
            .field("bind", &self.bind)
            .finish()
    }
}

fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(dir).join("sesame/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/sesame/config.toml"))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Resolve from flags, environment and file, in that order of precedence.
    pub fn load(
        relay: Option<String>,
        api_key: Option<String>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Config> {
        Config::from_flags(Flags {
            relay,
            api_key,
            ca,
            bind: None,
        })
    }

    /// [`Config::load`] with every flag.
    pub fn from_flags(flags: Flags) -> anyhow::Result<Config> {
        let Flags {
            relay,
            api_key,
            ca,
            bind,
        } = flags;
        let file = match config_path() {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str::<File>(&text)
                    .with_context(|| format!("invalid settings in {}", p.display()))?
            }
            _ => File::default(),
        };
        let Some(relay) = relay.or_else(|| env("SESAME_RELAY")).or(file.relay) else {
            bail!("no relay configured: set SESAME_RELAY=https://HOST:PORT or relay in ~/.config/sesame/config.toml");
        };
        let Some(api_key) = api_key.or_else(|| env("SESAME_API_KEY")).or(file.api_key) else {
            bail!("no API key configured: set SESAME_API_KEY or api_key in ~/.config/sesame/config.toml");
        };
        let ca = ca
            .or_else(|| env("SESAME_CA").map(PathBuf::from))
            .or(file.ca);
        let bind = match bind {
            Some(ip) => Some(ip),
            None => match env("SESAME_BIND") {
                Some(v) => Some(v.trim().parse().map_err(|_| {
                    anyhow::anyhow!("invalid SESAME_BIND '{v}': expected an IP address")
                })?),
                None => file.bind,
            },
        };
        Ok(Config {
            relay: relay.trim_end_matches('/').to_string(),
            api_key,
            ca,
            bind,
        })
    }
}
