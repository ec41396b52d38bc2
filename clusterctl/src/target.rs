//! Which daemon a command talks to, and talking to it: every command that
//! asks a daemon something shares these options.

use std::path::PathBuf;

use anyhow::Context;
use cluster_core::api::{ClientError, Endpoint, Request, Response};

/// The control socket when neither `--socket` nor `--config` is given.
pub(crate) const DEFAULT_SOCKET: &str = "/run/kvmha/api.sock";

/// Where to find the daemon.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// The daemon's control socket [default: /run/kvmha/api.sock].
    #[arg(long, short = 's', env = "KVMHA_SOCKET", conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Take the socket from this configuration's `api.socket` (with
    /// `--url`, the token file from its `api.token_file`).
    #[arg(long, short = 'c', env = "KVMHA_CONFIG")]
    config: Option<PathBuf>,
    /// Talk to a daemon's management address (`api.listen`) instead of its
    /// socket, as in `http://192.0.2.10:7440`.
    #[arg(long, value_name = "URL", conflicts_with = "socket")]
    url: Option<String>,
    /// The bearer token for `--url` (a file private to its owner).
    #[arg(long, value_name = "FILE", requires = "url")]
    token_file: Option<PathBuf>,
}

impl Target {
    /// A target for the control socket `socket`.
    pub(crate) fn socket(socket: PathBuf) -> Self {
        Self {
            socket: Some(socket),
            config: None,
            url: None,
            token_file: None,
        }
    }

    /// Where these options point.
    pub(crate) fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let config = || -> anyhow::Result<Option<conf::Config>> {
            self.config
                .as_ref()
                .map(|c| conf::load(c).with_context(|| format!("configuration {}", c.display())))
                .transpose()
        };
        if let Some(url) = &self.url {
            let url = if url.contains("://") {
                url.clone()
            } else {
                format!("http://{url}")
            };
            let token_file = match &self.token_file {
                Some(f) => Some(f.clone()),
                None => config()?.and_then(|c| c.api.token_file),
            };
            let token = token_file
                .map(|f| cluster_witness::read_token_file(&f))
                .transpose()?;
            return Ok(Endpoint::Url { url, token });
        }
        Ok(Endpoint::Socket(match &self.socket {
            Some(s) => s.clone(),
            None => match config()? {
                Some(c) => c.api.socket,
                None => PathBuf::from(DEFAULT_SOCKET),
            },
        }))
    }
}

/// A connection to one daemon, for one command.
#[derive(Debug)]
pub(crate) struct Client {
    rt: tokio::runtime::Runtime,
    endpoint: Endpoint,
}

impl Client {
    /// A client of the daemon `target` points at.
    pub(crate) fn new(target: &Target) -> anyhow::Result<Self> {
        let endpoint = target.endpoint()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        Ok(Self { rt, endpoint })
    }

    /// Send one request.
    pub(crate) fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.rt.block_on(self.endpoint.call(request))
    }
}

/// The error for an answer of the wrong kind.
pub(crate) fn unexpected(answer: &Response) -> anyhow::Error {
    let kind = match answer {
        Response::Status(_) => "status",
        Response::Events(_) => "events",
        Response::Accepted { .. } => "accepted",
        Response::GuestFenced { .. } => "guest_fenced",
    };
    anyhow::anyhow!("the daemon answered with `{kind}`, which this command did not ask for")
}
