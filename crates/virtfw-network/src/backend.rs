//! Choosing the firewall backend like libvirt's `firewall_backend` setting (spec §7.1).
//!
//! A configured backend is used if its program is installed, otherwise it is an error (never a
//! silent switch: rules would land where the administrator does not look). Without a setting,
//! nftables wins when `nft` is found, then iptables.

use std::path::{Path, PathBuf};

use virtfw::executor::find_program;
use virtfw::Backend;

use crate::error::{NetworkError, Result};

/// The program whose presence makes a backend available.
fn program(backend: Backend) -> &'static str {
    match backend {
        Backend::Nftables => "nft",
        _ => "iptables",
    }
}

/// Pick the backend: `configured` if available, else the first of nftables, iptables found.
pub fn select(configured: Option<Backend>) -> Result<Backend> {
    select_with(configured, |p| find_program(p).is_some())
}

/// [`select`] with an injectable "is this program installed" test.
pub fn select_with(
    configured: Option<Backend>,
    installed: impl Fn(&str) -> bool,
) -> Result<Backend> {
    match configured {
        Some(Backend::None) => Ok(Backend::None),
        Some(b) if installed(program(b)) => Ok(b),
        Some(b) => Err(NetworkError::Backend(format!(
            "requested firewall_backend '{b}' is not available ({} not found on PATH)",
            program(b)
        ))),
        None => [Backend::Nftables, Backend::Iptables]
            .into_iter()
            .find(|b| installed(program(*b)))
            .ok_or_else(|| {
                NetworkError::Backend("could not find a usable firewall backend".into())
            }),
    }
}

/// The `firewall_backend` value of a libvirt `network.conf` (`None` when the file or the key is
/// absent). Unknown values are an error naming the file, as in libvirt.
pub fn read_network_conf(path: &Path) -> Result<Option<Backend>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("firewall_backend") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        return value.parse::<Backend>().map(Some).map_err(|_| {
            NetworkError::Backend(format!(
                "unrecognized 'firewall_backend = '{value}' set in network driver config file {}",
                path.display()
            ))
        });
    }
    Ok(None)
}

/// libvirt's location of `network.conf` for the privileged daemon.
pub fn default_network_conf() -> PathBuf {
    PathBuf::from("/etc/libvirt/network.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_libvirt() {
        assert_eq!(select_with(None, |_| true).unwrap(), Backend::Nftables);
        assert_eq!(
            select_with(None, |p| p == "iptables").unwrap(),
            Backend::Iptables
        );
        assert!(select_with(None, |_| false).is_err());
        assert_eq!(
            select_with(Some(Backend::Iptables), |_| true).unwrap(),
            Backend::Iptables
        );
        let err = select_with(Some(Backend::Nftables), |p| p == "iptables").unwrap_err();
        assert!(err
            .to_string()
            .contains("requested firewall_backend 'nftables'"));
    }

    #[test]
    fn network_conf() {
        let dir = std::env::temp_dir().join(format!("virtfw-netconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("network.conf");
        std::fs::write(
            &f,
            "# comment\n#firewall_backend = \"nftables\"\nfirewall_backend = \"iptables\"\n",
        )
        .unwrap();
        assert_eq!(read_network_conf(&f).unwrap(), Some(Backend::Iptables));
        std::fs::write(&f, "firewall_backend = \"pf2\"\n").unwrap();
        assert!(read_network_conf(&f).is_err());
        assert_eq!(read_network_conf(&dir.join("missing")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
