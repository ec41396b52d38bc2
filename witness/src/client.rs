//! The client cluster nodes use to ask the witness for its vote: one
//! `POST /v1/vote` per call, over `http` or `https`, with a per-request
//! timeout, an optional extra CA certificate and an optional bearer token.
//!
//! A reply is checked before it is returned: a grant must be for the view
//! sent and for no longer than the lease asked. A node should count a
//! granted lease from when it *sent* the request, not from when the reply
//! arrived.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Certificate, Url};

use crate::protocol::{ErrorReply, VoteReply, VoteRequest};
use crate::token::check_token;

/// The largest reply accepted, in bytes.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Why a client could not be built or a vote could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The base URL is not an `http` or `https` URL with a host.
    #[error("invalid witness URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file could not be read.
    #[error("cannot read CA file {}", path.display())]
    CaFile {
        /// The CA file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("CA file {}: {reason}", path.display())]
    Certificate {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The bearer token cannot be sent in a header.
    #[error("invalid bearer token: {reason}")]
    InvalidToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP client could not be set up (TLS initialisation).
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// No answer: the witness could not be reached, the connection failed,
    /// or the request timed out.
    #[error("witness {url} unreachable{}", if *timed_out { " (timed out)" } else { "" })]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Whether the per-request timeout ran out.
        timed_out: bool,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The witness answered with an error status.
    #[error("witness {url} answered {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status code (400 malformed request, 401 token missing
        /// or wrong, ...).
        status: u16,
        /// The witness's error text.
        message: String,
    },
    /// The witness answered 2xx with something that is not a valid reply.
    #[error("witness {url} sent an undecodable reply: {reason}")]
    Decode {
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A client of one witness.
#[derive(Clone, Debug)]
pub struct WitnessClient {
    http: reqwest::Client,
    vote_url: Url,
    auth: Option<HeaderValue>,
}

impl WitnessClient {
    /// A client of the witness at `base_url` (`http://` or `https://`, a
    /// host name or an IPv4 or bracketed IPv6 literal, as in
    /// `http://[::1]:7450`; a path prefix is kept). Each request, connection
    /// included, must complete within `timeout`. `ca_file` (PEM, one or more
    /// certificates) is trusted in addition to the system's roots; `token`
    /// is sent as `Authorization: Bearer <token>`. Proxy settings from the
    /// environment are ignored and redirects are not followed.
    pub fn new(
        base_url: &str,
        timeout: Duration,
        ca_file: Option<&Path>,
        token: Option<&str>,
    ) -> Result<Self, WitnessError> {
        let vote_url = vote_url(base_url)?;
        let auth = token
            .map(|token| {
                check_token(token).map_err(|reason| WitnessError::InvalidToken { reason })?;
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        WitnessError::InvalidToken {
                            reason: "not a valid header value",
                        }
                    })?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "cluster-witness-client/",
                env!("CARGO_PKG_VERSION")
            ));
        if let Some(path) = ca_file {
            builder = builder.tls_certs_merge(read_ca_file(path)?);
        }
        let http = builder.build().map_err(WitnessError::Client)?;
        Ok(Self {
            http,
            vote_url,
            auth,
        })
    }

    /// The URL votes are posted to.
    pub fn vote_url(&self) -> &str {
        self.vote_url.as_str()
    }

    /// Ask for (or renew) the witness's vote.
    pub async fn vote(&self, req: &VoteRequest) -> Result<VoteReply, WitnessError> {
        let url = self.vote_url.as_str();
        let mut request = self.http.post(self.vote_url.clone()).json(req);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let unreachable = |source: reqwest::Error| WitnessError::Unreachable {
            url: url.to_owned(),
            timed_out: source.is_timeout(),
            source,
        };
        let decode = |reason: String| WitnessError::Decode {
            url: url.to_owned(),
            reason,
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let mut body = Vec::new();
        let mut too_long = false;
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                too_long = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(WitnessError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                message: error_text(status, &body),
            });
        }
        if too_long {
            return Err(decode(format!("longer than {MAX_REPLY_BYTES} bytes")));
        }
        let reply: VoteReply = serde_json::from_slice(&body).map_err(|e| decode(e.to_string()))?;
        if reply.granted {
            if reply.holder != req.view {
                return Err(decode(format!(
                    "granted for {:?} while the view sent was {:?}",
                    reply.holder, req.view
                )));
            }
            if reply.lease_ms == 0 || reply.lease_ms > req.lease_ms.max(1) {
                return Err(decode(format!(
                    "granted a lease of {} ms for {} ms asked",
                    reply.lease_ms, req.lease_ms
                )));
            }
        }
        Ok(reply)
    }
}

fn vote_url(base_url: &str) -> Result<Url, WitnessError> {
    let invalid = |reason: String| WitnessError::InvalidUrl {
        url: base_url.to_owned(),
        reason,
    };
    let mut url = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}` is neither http nor https",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(invalid("no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not used; give a bearer token".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed".to_owned()));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.join("v1/vote").map_err(|e| invalid(e.to_string()))
}

fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, WitnessError> {
    let pem = std::fs::read(path).map_err(|source| WitnessError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| WitnessError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let certs = Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".to_owned()));
    }
    Ok(certs)
}

/// The witness's error text: the `error` of an [`ErrorReply`], else the
/// start of the body, else the status's reason.
fn error_text(status: reqwest::StatusCode, body: &[u8]) -> String {
    if let Ok(reply) = serde_json::from_slice::<ErrorReply>(body) {
        return reply.error;
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no reason").to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str) -> Result<String, WitnessError> {
        vote_url(base).map(|u| u.to_string())
    }

    #[test]
    fn builds_the_vote_url_from_the_base() {
        for (base, want) in [
            ("http://127.0.0.1:7450", "http://127.0.0.1:7450/v1/vote"),
            ("http://[::1]:7450/", "http://[::1]:7450/v1/vote"),
            (
                "https://[2001:db8:300::10]:7450",
                "https://[2001:db8:300::10]:7450/v1/vote",
            ),
            (
                "https://witness.example.net/kvmha",
                "https://witness.example.net/kvmha/v1/vote",
            ),
        ] {
            assert_eq!(url(base).unwrap_or_else(|e| panic!("{base}: {e}")), want);
        }
    }

    #[test]
    fn refuses_bad_urls() {
        for base in [
            "witness:7450",
            "ftp://witness",
            "http://",
            "http://user:pw@witness",
            "http://witness/?x=1",
            "not a url",
        ] {
            let err = url(base).err();
            assert!(
                matches!(err, Some(WitnessError::InvalidUrl { .. })),
                "{base}: {err:?}"
            );
        }
    }

    #[test]
    fn refuses_bad_tokens_and_ca_files() {
        let second = Duration::from_secs(1);
        let err = WitnessClient::new("http://[::1]:7450", second, None, Some("a b")).err();
        assert!(
            matches!(err, Some(WitnessError::InvalidToken { .. })),
            "{err:?}"
        );
        let err = WitnessClient::new("http://[::1]:7450", second, None, Some("")).err();
        assert!(
            matches!(err, Some(WitnessError::InvalidToken { .. })),
            "{err:?}"
        );

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("absent.pem");
        let err = WitnessClient::new("https://[::1]:7450", second, Some(&missing), None).err();
        assert!(matches!(err, Some(WitnessError::CaFile { .. })), "{err:?}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let err = WitnessClient::new("https://[::1]:7450", second, Some(&garbage), None).err();
        assert!(
            matches!(err, Some(WitnessError::Certificate { .. })),
            "{err:?}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = WitnessClient::new("https://[::1]:7450", second, Some(&broken), None).err();
        assert!(
            matches!(err, Some(WitnessError::Certificate { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn error_text_prefers_the_json_error() {
        let status = reqwest::StatusCode::BAD_REQUEST;
        assert_eq!(
            error_text(status, br#"{"error":"node `a` is not in its own view"}"#),
            "node `a` is not in its own view"
        );
        assert_eq!(error_text(status, b"  plain text\n"), "plain text");
        assert_eq!(error_text(status, b""), "Bad Request");
    }
}
