//! Addresses of the host<->guest linkage: `vsock:CID:PORT`, `unix:PATH`,
//! `tcp:HOST:PORT`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The vsock context id `VMADDR_CID_ANY`, written `any`.
pub const VSOCK_CID_ANY: u32 = u32::MAX;
/// The vsock context id of the host, written `host`.
pub const VSOCK_CID_HOST: u32 = 2;

/// Where a linkage session listens or connects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An `AF_VSOCK` address: context id and port.
    Vsock {
        /// Context id; [`VSOCK_CID_ANY`] to listen on every CID.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix stream socket path (also a virtio-serial channel's host end).
    Unix(PathBuf),
    /// A TCP address, IPv4 or IPv6.
    Tcp(SocketAddr),
}

/// Why an endpoint string was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid endpoint `{input}`: {reason} (expected `vsock:CID:PORT`, `unix:/PATH` or `tcp:HOST:PORT`)"
)]
pub struct ParseEndpointError {
    input: String,
    reason: &'static str,
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseEndpointError {
            input: s.to_owned(),
            reason,
        };
        let (scheme, rest) = s.split_once(':').ok_or_else(|| err("no scheme"))?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| err("vsock needs CID:PORT"))?;
                let cid = match cid {
                    "any" => VSOCK_CID_ANY,
                    "host" => VSOCK_CID_HOST,
                    n => n
                        .parse()
                        .map_err(|_| err("CID is not a number, `any` or `host`"))?,
                };
                let port = port.parse().map_err(|_| err("port is not a number"))?;
                Ok(Self::Vsock { cid, port })
            }
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(err("a unix socket path must be absolute"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            "tcp" => rest
                .parse()
                .map(Self::Tcp)
                .map_err(|_| err("not HOST:PORT with an IP address (IPv6 in brackets)")),
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } if *cid == VSOCK_CID_ANY => write!(f, "vsock:any:{port}"),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Endpoint {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Endpoint".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`vsock:CID:PORT` (CID a number, `any` or `host`), `unix:/PATH`, or `tcp:HOST:PORT`.",
            "pattern": "^(vsock:(any|host|[0-9]+):[0-9]+|unix:/.*|tcp:.+:[0-9]+)$",
            "examples": ["vsock:host:5410", "unix:/run/kvmha/linkage.sock", "tcp:[::1]:5410"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_transport() {
        assert_eq!(
            "vsock:host:5410".parse::<Endpoint>().ok(),
            Some(Endpoint::Vsock { cid: 2, port: 5410 })
        );
        assert_eq!(
            "vsock:any:1".parse::<Endpoint>().ok(),
            Some(Endpoint::Vsock {
                cid: VSOCK_CID_ANY,
                port: 1
            })
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<Endpoint>().ok(),
            Some(Endpoint::Unix("/run/x.sock".into()))
        );
        assert!(
            matches!("tcp:[::1]:5410".parse::<Endpoint>(), Ok(Endpoint::Tcp(a)) if a.is_ipv6())
        );
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "vsock:2",
            "unix:relative",
            "tcp:localhost:1",
            "udp:1.2.3.4:5",
            "nothing",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "vsock:any:5410",
            "vsock:7:1",
            "unix:/a/b",
            "tcp:127.0.0.1:9",
            "tcp:[::1]:9",
        ] {
            let e: Endpoint = s.parse().unwrap_or(Endpoint::Unix("/".into()));
            assert_eq!(e.to_string(), s);
        }
    }
}
