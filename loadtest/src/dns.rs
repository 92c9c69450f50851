//! A real DNS server for the simulated domains: dnsmasq, authoritative for them, answering
//! MX queries with the providers' own MX host names, whose addresses are the simulators'. So
//! Skein finds the simulators as it finds real providers (and recognises a custom domain
//! hosted at a provider by its MX), and senders deliver to port `smtp_port` of each.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A domain and the MX host that receives its mail (with the address it resolves to).
#[derive(Debug, Clone)]
pub struct Zone {
    /// Recipient domain.
    pub domain: String,
    /// Its MX host.
    pub mx: String,
    /// The MX host's address.
    pub ip: String,
}

/// A running dnsmasq.
pub struct Dns {
    child: Child,
    /// `ip:port` it answers on.
    pub addr: String,
}

impl Dns {
    /// Whether dnsmasq is installed.
    pub fn available() -> bool {
        Command::new("dnsmasq")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts dnsmasq on `ip` answering for `zones` only (nothing is forwarded anywhere).
    pub fn for_zones(ip: &str, zones: &[Zone], log: &Path) -> anyhow::Result<Self> {
        let mut records = Vec::new();
        for z in zones {
            // Authoritative for the domain and for the MX host's names: anything else there
            // is NXDOMAIN, never asked of the Internet.
            records.push(format!("--local=/{}/", z.domain));
            records.push(format!("--local=/{}/", z.mx));
            records.push(format!("--mx-host={},{},10", z.domain, z.mx));
            records.push(format!("--host-record={},{}", z.mx, z.ip));
        }
        Self::start(ip, &records, log)
    }

    /// Starts dnsmasq on `ip` answering only from `records`, given as dnsmasq options
    /// (`--local=/test/` to be authoritative for a zone, `--mx-host=ex.test,mx1.ex.test,10`,
    /// `--host-record=mx1.ex.test,127.0.0.41`, `--dns-rr=null.test,15,000000` for a null
    /// MX); nothing is forwarded anywhere, and queries are logged to `log`.
    pub fn start(ip: &str, records: &[String], log: &Path) -> anyhow::Result<Self> {
        let port = crate::rig::free_port(ip)?;
        let mut args = vec![
            "--no-daemon".to_string(),
            "--port".into(),
            port.to_string(),
            "--listen-address".into(),
            ip.into(),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--conf-file=/dev/null".into(),
            "--local-ttl=300".into(),
            "--user=root".into(),
            "--log-queries".into(),
        ];
        args.extend(records.iter().cloned());
        let err = std::fs::File::create(log)?;
        let child = Command::new("dnsmasq")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .context("starting dnsmasq (is dnsmasq-base installed?)")?;
        let dns = Self {
            child,
            addr: format!("{ip}:{port}"),
        };
        let start = Instant::now();
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("started")
        {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("dnsmasq did not start: {}", std::fs::read_to_string(log)?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(dns)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
