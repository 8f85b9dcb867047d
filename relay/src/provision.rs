//! `sesame-relay device provision`: the image a microcontroller is flashed with.
//!
//! The relay host makes the device's Ed25519 key with its own RNG, binds the public
//! key to the agent that the activation code names (using the code up, as an agent's
//! first connection would), and writes an [`agent_core::provision`] image holding the
//! key, the agent's name, where to dial, the CA to pin and, when given, where the
//! device's `forward` sessions may connect. The activation code never reaches the
//! device.

use std::net::Ipv4Addr;
use std::path::Path;

use agent_core::provision::{ForwardRules, Provision, Rule};
use agent_core::wire::Bytes;
use ring::rand::SecureRandom;

use crate::secret::Secret;
use crate::store::Store;

/// Largest image firmware reserves flash for (one 4 KiB sector on most MCUs).
pub const MAX_IMAGE: usize = 4096;

/// What the image should say.
pub struct Request<'a> {
    /// The one-time activation code from `sesame-relay agent add`.
    pub code: &'a str,
    /// `HOST:PORT` the device dials (an IPv4 literal or a DNS name).
    pub relay: &'a str,
    /// DNS name to verify in the relay certificate; defaults to the host when it is a name.
    pub tls_name: Option<&'a str>,
    /// The CA certificate (PEM) to pin.
    pub ca_pem: &'a Path,
    /// Destinations the device's `forward` sessions may reach
    /// ([`agent_core::provision::Rule`]); none: the device does not forward.
    pub allow_dest: &'a [String],
    /// Destinations they may never reach (deny wins).
    pub deny_dest: &'a [String],
}

/// Check the request, bind a fresh key to the agent and return `(agent name, image)`.
pub async fn provision(store: &Store, req: &Request<'_>) -> anyhow::Result<(String, Vec<u8>)> {
    let (host, port) = req
        .relay
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|p| *p != 0)?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| anyhow::anyhow!("invalid --relay '{}': expected HOST:PORT", req.relay))?;
    let tls_name = match req.tls_name {
        Some(n) => n,
        None if host.parse::<Ipv4Addr>().is_ok() => anyhow::bail!(
            "--relay {host} is an IP address, which the device cannot check in a certificate: \
             give --tls-name with a DNS name of the relay's certificate (e.g. localhost)"
        ),
        None => host,
    };
    if tls_name.parse::<std::net::IpAddr>().is_ok() || tls_name.len() > 64 {
        anyhow::bail!("--tls-name '{tls_name}' must be a DNS name of at most 64 bytes");
    }
    for (flag, rules) in [
        ("--allow-dest", req.allow_dest),
        ("--deny-dest", req.deny_dest),
    ] {
        for rule in rules {
            if let Err(e) = Rule::parse(rule) {
                anyhow::bail!("{flag} '{rule}': invalid destination rule: {e}");
            }
        }
    }
    if req.allow_dest.is_empty() && !req.deny_dest.is_empty() {
        anyhow::bail!(
            "--deny-dest needs --allow-dest: a device forwards only to the destinations its image allows"
        );
    }
    let (allow, deny) = (req.allow_dest.join(" "), req.deny_dest.join(" "));
    let forward = (!req.allow_dest.is_empty()).then_some(ForwardRules {
        allow: &allow,
        deny: &deny,
    });
    let pem = std::fs::read(req.ca_pem)
        .map_err(|e| anyhow::anyhow!("CA file {}: {e}", req.ca_pem.display()))?;
    let ca = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or_else(|| anyhow::anyhow!("CA file {}: no certificate found", req.ca_pem.display()))?
        .map_err(|e| anyhow::anyhow!("CA file {}: {e}", req.ca_pem.display()))?;

    let rng = ring::rand::SystemRandom::new();
    let mut seed = [0u8; 32];
    let mut entropy = [0u8; 32];
    rng.fill(&mut seed)
        .and_then(|()| rng.fill(&mut entropy))
        .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| anyhow::anyhow!("cannot derive the device key"))?;
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();

    // Size the image before using up the code, so a too-large CA costs nothing.
    let mut image = vec![0u8; MAX_IMAGE];
    let probe = Provision {
        agent_id: &"x".repeat(64),
        key_seed: Bytes(&seed),
        relay_host: host,
        relay_port: port,
        tls_name,
        ca_der: Bytes(&ca),
        entropy: Bytes(&entropy),
        forward,
    };
    probe.encode(&mut image).map_err(|_| {
        anyhow::anyhow!(
            "the image would exceed {MAX_IMAGE} bytes (CA certificate is {} bytes, \
             forwarding rules {} bytes)",
            ca.len(),
            allow.len() + deny.len()
        )
    })?;

    let agent = store
        .activate(&Secret::from_string(req.code.to_string()), &public)
        .await??;
    let len = Provision {
        agent_id: &agent.name,
        ..probe
    }
    .encode(&mut image)
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    image.truncate(len);
    Ok((agent.name, image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    async fn store(name: &str) -> (std::path::PathBuf, Store) {
        let dir =
            std::env::temp_dir().join(format!("sesame-provision-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir).await.unwrap();
        (dir, store)
    }

    fn ca_file(dir: &Path) -> std::path::PathBuf {
        crate::tls::ensure_self_signed(dir, &[]).unwrap().ca
    }

    #[tokio::test]
    async fn image_binds_the_key_and_the_code_is_spent() {
        let (dir, store) = store("bind").await;
        let ca = ca_file(&dir);
        let (_id, code) = store.add_agent("dev-1", &BTreeMap::new()).await.unwrap();
        let req = Request {
            code: code.expose(),
            relay: "10.0.2.100:8443",
            tls_name: Some("localhost"),
            ca_pem: &ca,
            allow_dest: &[],
            deny_dest: &[],
        };
        let (name, image) = provision(&store, &req).await.unwrap();
        assert_eq!(name, "dev-1");
        let p = Provision::decode(&image).unwrap();
        assert_eq!(
            (p.agent_id, p.relay_host, p.relay_port, p.tls_name),
            ("dev-1", "10.0.2.100", 8443, "localhost")
        );
        // No rules: the device forwards nothing, and the image is format 1.
        assert_eq!((p.forward, &image[8..10]), (None, &[1u8, 0][..]));
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(p.key_seed.0).unwrap();
        let public = ring::signature::KeyPair::public_key(&pair).as_ref();
        let bound = store.agent_by_key(public).await.unwrap().unwrap();
        assert_eq!(bound.name, "dev-1");
        let again = provision(&store, &req).await.unwrap_err().to_string();
        assert!(again.contains("already used"), "{again}");
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_the_code_is_spent() {
        let (dir, store) = store("refuse").await;
        let ca = ca_file(&dir);
        let (_id, code) = store.add_agent("dev-2", &BTreeMap::new()).await.unwrap();
        let base = Request {
            code: code.expose(),
            relay: "127.0.0.1:8443",
            tls_name: None,
            ca_pem: &ca,
            allow_dest: &[],
            deny_dest: &[],
        };
        let ip = provision(&store, &base).await.unwrap_err().to_string();
        assert!(ip.contains("--tls-name"), "{ip}");
        let port = Request {
            relay: "relay.example:0",
            ..base
        };
        assert!(provision(&store, &port)
            .await
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT"));
        let missing = Request {
            relay: "relay.example:443",
            ca_pem: Path::new("/nonexistent/ca.pem"),
            ..base
        };
        assert!(provision(&store, &missing)
            .await
            .unwrap_err()
            .to_string()
            .contains("CA file"));
        let unknown = Request {
            code: "not-a-code",
            relay: "relay.example:443",
            ..base
        };
        assert!(provision(&store, &unknown)
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        // None of the failures spent the code.
        let ok = Request {
            relay: "relay.example:443",
            ..base
        };
        let (_, image) = provision(&store, &ok).await.unwrap();
        assert_eq!(Provision::decode(&image).unwrap().tls_name, "relay.example");
    }

    #[tokio::test]
    async fn forwarding_rules_are_checked_then_carried_in_the_image() {
        let (dir, store) = store("rules").await;
        let ca = ca_file(&dir);
        let (_id, code) = store.add_agent("dev-3", &BTreeMap::new()).await.unwrap();
        let allow = [
            "10.0.2.0/24:80,8000-8999".to_string(),
            "plc.local:502".into(),
        ];
        let deny = ["10.0.2.100".to_string()];
        let base = Request {
            code: code.expose(),
            relay: "relay.example:443",
            tls_name: None,
            ca_pem: &ca,
            allow_dest: &allow,
            deny_dest: &deny,
        };
        let bad = ["10.0.0.0/33".to_string()];
        let err = provision(
            &store,
            &Request {
                allow_dest: &bad,
                ..base
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--allow-dest '10.0.0.0/33': invalid destination rule: bad prefix length"
        );
        let v6 = ["[fd00::1]:22".to_string()];
        let err = provision(
            &store,
            &Request {
                deny_dest: &v6,
                ..base
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--deny-dest '[fd00::1]:22': invalid destination rule: devices speak IPv4 only"
        );
        let err = provision(
            &store,
            &Request {
                allow_dest: &[],
                ..base
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--deny-dest needs --allow-dest"), "{err}");
        // None of the refusals spent the code.
        let (_, image) = provision(&store, &base).await.unwrap();
        let p = Provision::decode(&image).unwrap();
        assert_eq!(
            p.forward,
            Some(ForwardRules {
                allow: "10.0.2.0/24:80,8000-8999 plc.local:502",
                deny: "10.0.2.100",
            })
        );
    }
}
