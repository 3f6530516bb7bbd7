//! The text forms operators type: `ADDR:PORT/PROTO` for a service and `DIP[:PORT]` for a
//! backend. The CLI, the config file and the API all parse through here, so they agree.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use crate::{addr, flow::proto, maps::ServiceKey};

/// Transport protocol of a load-balanced service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// A service: VIP, port and protocol, e.g. `203.0.113.10:80/tcp` or `[2001:db8::10]:80/udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceSpec {
    pub vip: SocketAddr,
    pub proto: Proto,
}

/// A backend: `DIP` or `DIP:PORT`; without a port it listens on the service's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// Why a spec did not parse; the message names what is wrong and shows the expected form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

impl FromStr for ServiceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected ADDR:PORT/PROTO, e.g. 203.0.113.10:80/tcp";
        let (addr, p) = s
            .rsplit_once('/')
            .ok_or_else(|| SpecError(format!("{s:?}: missing /PROTO ({form})")))?;
        let proto = match p {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(SpecError(format!(
                    "{s:?}: protocol {other:?} is not load-balanced (only tcp and udp)"
                )));
            }
        };
        let vip: SocketAddr = addr
            .parse()
            .map_err(|_| SpecError(format!("{s:?}: {addr:?} is not ADDR:PORT ({form})")))?;
        if vip.port() == 0 {
            return Err(SpecError(format!("{s:?}: port 0 is not a service port")));
        }
        check_unicast(vip.ip()).map_err(|e| SpecError(format!("{s:?}: VIP {e}")))?;
        Ok(Self { vip, proto })
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vip, self.proto)
    }
}

impl ServiceSpec {
    /// The `LB_SERVICES` key of this service.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: addr::from_ip(self.vip.ip()),
            port: self.vip.port().to_be_bytes(),
            proto: self.proto.number(),
            _pad: 0,
        }
    }
}

impl FromStr for BackendSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected DIP or DIP:PORT, e.g. 192.0.2.11 or 192.0.2.11:8080";
        let (ip, port) = if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(SpecError(format!("{s:?}: port 0 is not a backend port")));
            }
            (sa.ip(), Some(sa.port()))
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            (ip, None)
        } else {
            return Err(SpecError(format!("{s:?}: not an address ({form})")));
        };
        check_unicast(ip).map_err(|e| SpecError(format!("{s:?}: backend {e}")))?;
        Ok(Self { ip, port })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.ip, p)),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl BackendSpec {
    /// The backend's socket address for a given service (port defaults to the service port).
    #[must_use]
    pub fn resolve(&self, svc: &ServiceSpec) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(svc.vip.port()))
    }
}

fn check_unicast(ip: IpAddr) -> Result<(), String> {
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.is_loopback(),
    };
    if bad {
        Err(format!("{ip} is not a unicast address"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services() {
        let s: ServiceSpec = "203.0.113.10:80/tcp".parse().unwrap();
        assert_eq!(s.to_string(), "203.0.113.10:80/tcp");
        assert_eq!(s.key().port, [0, 80]);
        let s: ServiceSpec = "[2001:db8::10]:53/udp".parse().unwrap();
        assert_eq!(s.proto, Proto::Udp);
        for bad in [
            "203.0.113.10:80",
            "203.0.113.10/tcp",
            "203.0.113.10:80/icmp",
            "203.0.113.10:0/tcp",
            "203.0.113.300:80/tcp",
            "224.0.0.1:80/tcp",
            "0.0.0.0:80/tcp",
            "",
        ] {
            let e = bad.parse::<ServiceSpec>().unwrap_err();
            assert!(
                e.0.contains(&format!("{bad:?}")),
                "error for {bad:?} does not name it: {e}"
            );
        }
    }

    #[test]
    fn parses_backends() {
        let b: BackendSpec = "192.0.2.11".parse().unwrap();
        assert_eq!(b.port, None);
        let svc: ServiceSpec = "203.0.113.10:80/tcp".parse().unwrap();
        assert_eq!(b.resolve(&svc).to_string(), "192.0.2.11:80");
        let b: BackendSpec = "192.0.2.11:8080".parse().unwrap();
        assert_eq!(b.resolve(&svc).to_string(), "192.0.2.11:8080");
        assert_eq!(
            "[2001:db8::11]:80".parse::<BackendSpec>().unwrap().port,
            Some(80)
        );
        for bad in [
            "192.0.2.11:0",
            "backend1",
            "192.0.2.11:99999",
            "255.255.255.255",
            "127.0.0.1",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad:?} parsed");
        }
    }
}
