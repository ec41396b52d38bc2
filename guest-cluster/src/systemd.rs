//! `kind = "systemd"` resources: a systemd unit started, stopped and
//! probed through systemd's D-Bus API (`org.freedesktop.systemd1` on the
//! system bus), with `zbus`.
//!
//! # Start
//!
//! 1. For a `.service` unit, a runtime drop-in
//!    `/run/systemd/system/<unit>.d/50-kvmha.conf` with `Restart=no`, so
//!    that systemd never restarts the service behind the cluster's back (a
//!    restart on this node is the recovery ladder's decision, and a service
//!    restarted by systemd after the group moved away would run twice).
//!    Then `Reload` (a daemon-reload), so that systemd reads it. The file is
//!    written atomically; it lives under `/run`, so a reboot forgets it, and
//!    it stays after a stop. Other unit types (`.mount`, `.target`...) have
//!    no `Restart=` and get no drop-in.
//! 2. `Subscribe` (systemd sends job signals on the system bus only while a
//!    client is subscribed), then a match on `JobRemoved`, *before*
//!    `StartUnit(unit, "replace")`: a job can end before the method's
//!    reply reaches us, and its signal is then already queued.
//! 3. The `JobRemoved` of the returned job path (signals of other jobs are
//!    skipped; the unit argument is not compared, since systemd gives an
//!    alias's real name there) gives the result: `done` is success; `failed`,
//!    `timeout`, `dependency`, `canceled`, `skipped`, `invalid` and anything
//!    else are failures.
//! 4. The unit's `ActiveState` must then be `active` (or `reloading`,
//!    `refreshing`): a oneshot service without `RemainAfterExit=yes` is
//!    `inactive` again once its job is done, which cannot be monitored.
//!
//! An `enabled` unit is reported with a warning: systemd would start it at
//! boot on every node, outside the cluster's control.
//!
//! # Stop
//!
//! `StopUnit(unit, "replace")` the same way (subscribe first, wait for the
//! job's `JobRemoved`), then `ActiveState` must be `inactive`; a unit left
//! `failed` by its stop (its main process exited non-zero on `SIGTERM`) is
//! stopped too, and `ResetFailedUnit` clears the mark so that the next probe
//! does not report a failure. Stopping a unit systemd does not know
//! (`NoSuchUnit`) succeeds: nothing of it can run.
//!
//! # Probe
//!
//! `GetUnit` (or `LoadUnit` when the unit is not loaded), then
//! `ActiveState`: `active`, `reloading`, `refreshing` are running,
//! `inactive` stopped, `failed` failed, `activating`, `deactivating` and
//! anything else unknown; so is any D-Bus error (no bus, no systemd).
//!
//! # Errors and time
//!
//! Every action as a whole (connecting included) is bounded by its
//! timeout; a start that runs out of time leaves its job to systemd (the
//! engine then stops the resource, and `StopUnit` with mode `replace`
//! cancels the pending start job). A unit name systemd rejects or does not
//! know (`NoSuchUnit`), a masked unit and a name that is not a valid unit
//! name are hard failures (no restart on this node); everything else is
//! soft. The bus connection is kept between actions and opened again after
//! a transport error.
//!
//! # What the tests cover, and what they do not
//!
//! The testbed has no systemd as PID 1, so the tests run a private
//! `dbus-daemon` and serve a fake `org.freedesktop.systemd1` (Manager and
//! Unit objects) on it: the calls, their arguments and order, the drop-in,
//! job signals (before and after the reply, other jobs of the unit, every
//! result), `ActiveState` and bus errors are exercised for real over
//! D-Bus. Not covered: real systemd semantics (how a daemon-reload applies
//! `Restart=no` to a running service, job merging, polkit), which only a
//! machine booted with systemd can show.

use std::io;
use std::path::{Path, PathBuf};

use cluster_core::resource::{ActionContext, ActionOutcome, BoxFuture, Probe, ResourceDriver};
use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// The drop-in's file name.
pub const DROPIN_NAME: &str = "50-kvmha.conf";
/// What the drop-in says.
pub const DROPIN: &str = "# Written by kvmha: the cluster, not systemd, restarts and moves this service.\n\
                          [Service]\nRestart=no\n";
/// Where runtime unit drop-ins go.
pub const RUNTIME_UNIT_DIR: &str = "/run/systemd/system";
/// The job mode of every start and stop.
const JOB_MODE: &str = "replace";

const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
const UNIT_MASKED: &str = "org.freedesktop.systemd1.UnitMasked";
const ALREADY_SUBSCRIBED: &str = "org.freedesktop.systemd1.AlreadySubscribed";
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
trait Manager {
    // `no_autostart`: systemd is PID 1, never bus-activated; without it the
    // bus tries its `Exec=/bin/false` stub when systemd is absent.
    #[zbus(no_autostart)]
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(no_autostart)]
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(no_autostart)]
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(no_autostart)]
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(no_autostart)]
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    #[zbus(no_autostart)]
    fn reload(&self) -> zbus::Result<()>;
    #[zbus(no_autostart)]
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::zvariant::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
trait Unit {
    #[zbus(property(emits_changed_signal = "false"))]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn unit_file_state(&self) -> zbus::Result<String>;
}

/// Which bus systemd is reached on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` or its default socket).
    System,
    /// A bus address, e.g. `unix:path=/run/test/bus` (tests).
    Address(String),
}

/// Where the driver finds systemd and writes its drop-ins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The bus.
    pub bus: Bus,
    /// The directory of runtime drop-ins (`/run/systemd/system`).
    pub dropin_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bus: Bus::System,
            dropin_dir: PathBuf::from(RUNTIME_UNIT_DIR),
        }
    }
}

/// What went wrong in an action.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("`{0}` is not a valid unit name")]
    InvalidUnit(String),
    #[error("cannot connect to systemd's bus: {0}")]
    Connect(#[source] zbus::Error),
    #[error("{call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot write the drop-in {}: {source}", path.display())]
    DropIn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {action} job ended with result `{result}`")]
    Job {
        action: &'static str,
        result: String,
    },
    #[error("the bus connection closed before the {action} job ended")]
    SignalsEnded { action: &'static str },
    #[error("ActiveState is `{state}` after the {action} job{hint}")]
    State {
        action: &'static str,
        state: String,
        hint: &'static str,
    },
}

impl Error {
    fn call(call: &'static str) -> impl FnOnce(zbus::Error) -> Self {
        move |source| Self::Call { call, source }
    }

    /// Not worth retrying on this node.
    fn is_hard(&self) -> bool {
        match self {
            Self::InvalidUnit(_) => true,
            Self::Call { source, .. } => matches!(
                error_name(source).as_deref(),
                Some(NO_SUCH_UNIT | UNIT_MASKED | INVALID_ARGS)
            ),
            _ => false,
        }
    }

    /// The bus connection may be broken: open a new one next time.
    fn drops_connection(&self) -> bool {
        match self {
            Self::Connect(_) | Self::SignalsEnded { .. } => true,
            Self::Call { source, .. } => error_name(source).is_none(),
            _ => false,
        }
    }
}

/// The D-Bus error name of a method error, if it is one.
fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str().to_owned()),
        zbus::Error::FDO(e) => Some(zbus::DBusError::name(e.as_ref()).as_str().to_owned()),
        _ => None,
    }
}

fn is_named(e: &zbus::Error, name: &str) -> bool {
    error_name(e).as_deref() == Some(name)
}

/// Whether `unit` is a name systemd accepts: `[A-Za-z0-9:_.\\@-]`, a dot
/// for the type, at most 255 bytes. It also keeps the drop-in path inside
/// the drop-in directory.
pub fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('.')
        && unit.contains('.')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
        }
    }
}

/// Driver of one `kind = "systemd"` resource.
#[derive(Debug)]
pub struct SystemdDriver {
    unit: String,
    settings: Settings,
    /// The bus connection, kept between actions.
    connection: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl SystemdDriver {
    /// A driver for `config` on the system bus.
    pub fn new(config: &conf::SystemdResource) -> Self {
        Self::with_settings(config, Settings::default())
    }

    /// A driver for `config` with its bus and drop-in directory chosen.
    pub fn with_settings(config: &conf::SystemdResource, settings: Settings) -> Self {
        Self {
            unit: config.unit.clone(),
            settings,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// The drop-in file of this unit.
    pub fn dropin_path(&self) -> PathBuf {
        self.settings
            .dropin_dir
            .join(format!("{}.d", self.unit))
            .join(DROPIN_NAME)
    }

    async fn connect(&self) -> Result<zbus::Connection, Error> {
        let mut cached = self.connection.lock().await;
        if let Some(connection) = cached.as_ref() {
            return Ok(connection.clone());
        }
        let builder = match &self.settings.bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::Address(address) => zbus::connection::Builder::address(address.as_str()),
        }
        .map_err(Error::Connect)?;
        let connection = builder.build().await.map_err(Error::Connect)?;
        tracing::debug!(unit = %self.unit, bus = ?self.settings.bus, "connected to systemd's bus");
        *cached = Some(connection.clone());
        Ok(connection)
    }

    /// Forget the connection after an error that may have broken it.
    async fn after_error(&self, e: &Error) {
        if e.drops_connection() {
            *self.connection.lock().await = None;
        }
    }

    async fn manager(connection: &zbus::Connection) -> Result<ManagerProxy<'static>, Error> {
        ManagerProxy::builder(connection)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(Error::call("creating the Manager proxy"))
    }

    async fn unit_proxy(
        connection: &zbus::Connection,
        path: OwnedObjectPath,
    ) -> Result<UnitProxy<'static>, Error> {
        UnitProxy::builder(connection)
            .path(path)
            .map_err(Error::call("creating a Unit proxy"))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(Error::call("creating a Unit proxy"))
    }

    /// The unit's object, loading the unit if systemd has not.
    async fn unit_object(
        &self,
        connection: &zbus::Connection,
        manager: &ManagerProxy<'_>,
    ) -> Result<UnitProxy<'static>, Error> {
        let path = match manager.get_unit(&self.unit).await {
            Ok(path) => path,
            Err(e) if is_named(&e, NO_SUCH_UNIT) => manager
                .load_unit(&self.unit)
                .await
                .map_err(Error::call("LoadUnit"))?,
            Err(e) => return Err(Error::call("GetUnit")(e)),
        };
        Self::unit_proxy(connection, path).await
    }

    async fn active_state(
        &self,
        connection: &zbus::Connection,
        manager: &ManagerProxy<'_>,
    ) -> Result<String, Error> {
        self.unit_object(connection, manager)
            .await?
            .active_state()
            .await
            .map_err(Error::call("reading ActiveState"))
    }

    /// Write the drop-in (atomically) and have systemd read it.
    async fn install_dropin(&self, manager: &ManagerProxy<'_>) -> Result<(), Error> {
        let path = self.dropin_path();
        write_atomically(&path, DROPIN)
            .await
            .map_err(|source| Error::DropIn {
                path: path.clone(),
                source,
            })?;
        tracing::debug!(unit = %self.unit, dropin = %path.display(), "wrote the drop-in; reloading systemd");
        manager.reload().await.map_err(Error::call("Reload"))
    }

    /// Queue a start or stop job and wait for its end.
    async fn run_job(&self, manager: &ManagerProxy<'_>, action: Action) -> Result<(), Error> {
        match manager.subscribe().await {
            Ok(()) => {}
            Err(e) if is_named(&e, ALREADY_SUBSCRIBED) => {}
            Err(e) => return Err(Error::call("Subscribe")(e)),
        }
        // Listen before queueing the job: it may end before the reply. Not
        // filtered on the unit argument: for an alias (`sshd.service`)
        // systemd names the unit by its id (`ssh.service`).
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(Error::call("adding a JobRemoved match"))?;
        let job = match action {
            Action::Start => manager
                .start_unit(&self.unit, JOB_MODE)
                .await
                .map_err(Error::call("StartUnit"))?,
            Action::Stop => manager
                .stop_unit(&self.unit, JOB_MODE)
                .await
                .map_err(Error::call("StopUnit"))?,
        };
        tracing::debug!(unit = %self.unit, job = %job.as_str(), "{} job queued", action.as_str());
        while let Some(signal) = removed.next().await {
            let args = match signal.args() {
                Ok(args) => args,
                Err(e) => {
                    tracing::debug!(unit = %self.unit, error = %e, "ignoring a malformed JobRemoved signal");
                    continue;
                }
            };
            if args.job.as_str() != job.as_str() {
                continue;
            }
            return if args.result == "done" {
                Ok(())
            } else {
                Err(Error::Job {
                    action: action.as_str(),
                    result: args.result.to_owned(),
                })
            };
        }
        Err(Error::SignalsEnded {
            action: action.as_str(),
        })
    }

    async fn start_inner(&self) -> Result<(), Error> {
        if !valid_unit_name(&self.unit) {
            return Err(Error::InvalidUnit(self.unit.clone()));
        }
        let connection = self.connect().await?;
        let manager = Self::manager(&connection).await?;
        if self.unit.ends_with(".service") {
            self.install_dropin(&manager).await?;
        }
        self.run_job(&manager, Action::Start).await?;
        let unit = self.unit_object(&connection, &manager).await?;
        let state = unit
            .active_state()
            .await
            .map_err(Error::call("reading ActiveState"))?;
        if !matches!(state.as_str(), "active" | "reloading" | "refreshing") {
            let hint = if state == "inactive" {
                " (a oneshot service needs RemainAfterExit=yes to be a resource)"
            } else {
                ""
            };
            return Err(Error::State {
                action: "start",
                state,
                hint,
            });
        }
        match unit.unit_file_state().await {
            Ok(file_state) if file_state.starts_with("enabled") => tracing::warn!(
                unit = %self.unit,
                unit_file_state = %file_state,
                "the unit is enabled: systemd starts it at boot on every node, outside the cluster's control; disable it",
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(unit = %self.unit, error = %e, "cannot read UnitFileState"),
        }
        Ok(())
    }

    async fn stop_inner(&self) -> Result<(), Error> {
        if !valid_unit_name(&self.unit) {
            // Nothing of that name can run.
            return Ok(());
        }
        let connection = self.connect().await?;
        let manager = Self::manager(&connection).await?;
        match self.run_job(&manager, Action::Stop).await {
            Ok(()) => {}
            Err(Error::Call { source, .. }) if is_named(&source, NO_SUCH_UNIT) => {
                tracing::info!(unit = %self.unit, "systemd does not know the unit: nothing to stop");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let state = self.active_state(&connection, &manager).await?;
        match state.as_str() {
            "inactive" => Ok(()),
            "failed" => {
                tracing::warn!(unit = %self.unit, "the unit stopped in the failed state; resetting it");
                manager
                    .reset_failed_unit(&self.unit)
                    .await
                    .map_err(Error::call("ResetFailedUnit"))
            }
            _ => Err(Error::State {
                action: "stop",
                state,
                hint: "",
            }),
        }
    }

    async fn probe_inner(&self) -> Result<Probe, Error> {
        if !valid_unit_name(&self.unit) {
            return Ok(Probe::Stopped);
        }
        let connection = self.connect().await?;
        let manager = Self::manager(&connection).await?;
        let state = self.active_state(&connection, &manager).await?;
        Ok(probe_of(&state))
    }

    async fn act(&self, ctx: &ActionContext, action: Action) -> ActionOutcome {
        tracing::info!(
            group = %ctx.group,
            resource = %ctx.resource,
            unit = %self.unit,
            reason = %ctx.reason,
            "{} of the unit",
            action.as_str(),
        );
        let work = async {
            match action {
                Action::Start => self.start_inner().await,
                Action::Stop => self.stop_inner().await,
            }
        };
        match tokio::time::timeout(ctx.timeout, work).await {
            Ok(Ok(())) => ActionOutcome::Ok,
            Ok(Err(e)) => {
                self.after_error(&e).await;
                let hard = e.is_hard();
                let message = format!("{}: {e}", self.unit);
                tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    unit = %self.unit,
                    hard,
                    "the {} failed: {message}",
                    action.as_str(),
                );
                ActionOutcome::Failed { message, hard }
            }
            Err(_) => {
                tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    unit = %self.unit,
                    "the {} did not finish within {:?}",
                    action.as_str(),
                    ctx.timeout,
                );
                ActionOutcome::TimedOut
            }
        }
    }
}

/// The probe answer for an `ActiveState`.
fn probe_of(state: &str) -> Probe {
    match state {
        "active" | "reloading" | "refreshing" => Probe::Running,
        "inactive" => Probe::Stopped,
        "failed" => Probe::Failed("the unit is in the failed state".into()),
        other => Probe::Unknown(format!("the unit is {other}")),
    }
}

/// Write `text` to `path` through a temporary file and a rename, creating
/// the directory.
async fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{DROPIN_NAME}.tmp-{}", std::process::id()));
    tokio::fs::write(&tmp, text).await?;
    match tokio::fs::rename(&tmp, path).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

impl ResourceDriver for SystemdDriver {
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(self.act(ctx, Action::Start))
    }

    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(self.act(ctx, Action::Stop))
    }

    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            match tokio::time::timeout(ctx.timeout, self.probe_inner()).await {
                Ok(Ok(probe)) => probe,
                Ok(Err(e)) => {
                    self.after_error(&e).await;
                    Probe::Unknown(format!("{}: {e}", self.unit))
                }
                Err(_) => Probe::Unknown(format!(
                    "{}: no answer from systemd within {:?}",
                    self.unit, ctx.timeout
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
    use std::time::{Duration, Instant};

    use cluster_core::resource::StartReason;
    use zbus::zvariant::ObjectPath;

    const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
    const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A private `dbus-daemon`, killed and reaped on drop. It runs in the
    /// foreground (`--nofork`) so that it is our child: killed by its own
    /// handle, never by a pid that could have been reused.
    struct DbusDaemon {
        child: Child,
        address: String,
        dir: tempfile::TempDir,
    }

    impl DbusDaemon {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let (child, address) = Self::spawn(&dir.path().join("bus"));
            Self {
                child,
                address,
                dir,
            }
        }

        fn spawn(socket: &Path) -> (Child, String) {
            let mut child = Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--nopidfile", "--print-address"])
                .arg(format!("--address=unix:path={}", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                // It complains that it cannot raise its fd limit.
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run dbus-daemon: {e}"));
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            if !line.starts_with("unix:") {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dbus-daemon printed no address: {line:?}");
            }
            // Without the printed `guid=`, as the system bus's address: a
            // new daemon on the same socket is then the same bus.
            (child, format!("unix:path={}", socket.display()))
        }

        /// Kill the daemon and start a new one on the same socket.
        fn restart(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let socket = self.dir.path().join("bus");
            let _ = std::fs::remove_file(&socket);
            let (child, address) = Self::spawn(&socket);
            self.child = child;
            self.address = address;
        }

        fn settings(&self) -> Settings {
            Settings {
                bus: Bus::Address(self.address.clone()),
                dropin_dir: self.dir.path().join("run-systemd-system"),
            }
        }
    }

    impl Drop for DbusDaemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// When a fake job ends.
    #[derive(Clone, Copy, Debug)]
    enum Ends {
        /// Its `JobRemoved` goes out before the method's reply.
        BeforeReply,
        /// This long after the reply.
        After(Duration),
        /// Never.
        Never,
    }

    #[derive(Clone, Copy, Debug)]
    struct Job {
        result: &'static str,
        state_after: &'static str,
        ends: Ends,
    }

    const DONE_ACTIVE: Job = Job {
        result: "done",
        state_after: "active",
        ends: Ends::After(Duration::from_millis(150)),
    };
    const DONE_INACTIVE: Job = Job {
        result: "done",
        state_after: "inactive",
        ends: Ends::After(Duration::from_millis(50)),
    };

    #[derive(Clone, Debug)]
    struct FakeUnit {
        /// The name systemd gives it in signals, if this is an alias.
        id: Option<&'static str>,
        /// systemd has a unit file for it.
        exists: bool,
        state: String,
        start: Job,
        stop: Job,
    }

    fn unit(state: &str, start: Job) -> FakeUnit {
        FakeUnit {
            id: None,
            exists: true,
            state: state.into(),
            start,
            stop: DONE_INACTIVE,
        }
    }

    #[derive(Debug, Default)]
    struct World {
        units: BTreeMap<String, FakeUnit>,
        calls: Vec<String>,
        next_job: u32,
    }

    type Shared = Arc<Mutex<World>>;

    fn lock(world: &Shared) -> MutexGuard<'_, World> {
        world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[derive(Debug, zbus::DBusError)]
    #[zbus(prefix = "org.freedesktop.systemd1")]
    enum FakeError {
        #[zbus(error)]
        ZBus(zbus::Error),
        NoSuchUnit(String),
    }

    /// systemd's object path for a unit (`bus_label_escape`).
    fn unit_path(name: &str) -> String {
        let mut path = String::from("/org/freedesktop/systemd1/unit/");
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() {
                path.push(char::from(b));
            } else {
                path.push_str(&format!("_{b:02x}"));
            }
        }
        path
    }

    fn object_path(path: String) -> Result<OwnedObjectPath, FakeError> {
        OwnedObjectPath::try_from(path).map_err(|e| FakeError::ZBus(e.into()))
    }

    async fn job_removed(
        connection: &zbus::Connection,
        id: u32,
        job: &str,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()> {
        let job = ObjectPath::try_from(job)?;
        connection
            .emit_signal(
                None::<&str>,
                MANAGER_PATH,
                MANAGER_IFACE,
                "JobRemoved",
                &(id, job, unit, result),
            )
            .await
    }

    /// The fake `org.freedesktop.systemd1.Manager`.
    struct FakeManager {
        world: Shared,
        dropin_dir: PathBuf,
    }

    impl FakeManager {
        fn record(&self, call: String) {
            lock(&self.world).calls.push(call);
        }

        async fn queue(
            &self,
            method: &str,
            name: String,
            mode: String,
            connection: &zbus::Connection,
        ) -> Result<OwnedObjectPath, FakeError> {
            let (id, job, unit_id) = {
                let mut world = lock(&self.world);
                world.calls.push(format!("{method} {name} {mode}"));
                world.next_job += 2;
                let id = world.next_job;
                let Some(unit) = world.units.get_mut(&name).filter(|u| u.exists) else {
                    return Err(FakeError::NoSuchUnit(format!("Unit {name} not found.")));
                };
                let start = method == "StartUnit";
                unit.state = if start { "activating" } else { "deactivating" }.into();
                let unit_id = unit.id.map_or_else(|| name.clone(), str::to_owned);
                (id, if start { unit.start } else { unit.stop }, unit_id)
            };
            let path = format!("/org/freedesktop/systemd1/job/{id}");
            // Another job of the same unit ends first, and fails: the
            // driver must wait for its own.
            let other = format!("/org/freedesktop/systemd1/job/{}", id - 1);
            job_removed(connection, id - 1, &other, &unit_id, "failed").await?;
            let world = self.world.clone();
            let connection = connection.clone();
            let path_ = path.clone();
            let finish = async move {
                if let Some(unit) = lock(&world).units.get_mut(&name) {
                    unit.state = job.state_after.into();
                }
                job_removed(&connection, id, &path_, &unit_id, job.result).await
            };
            match job.ends {
                Ends::BeforeReply => finish.await?,
                Ends::After(delay) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = finish.await;
                    });
                }
                Ends::Never => {}
            }
            object_path(path)
        }
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
    impl FakeManager {
        async fn subscribe(&self) {
            self.record("Subscribe".into());
        }

        /// Records the drop-ins present (with our text) when called.
        async fn reload(&self) {
            let mut found = Vec::new();
            if let Ok(dirs) = std::fs::read_dir(&self.dropin_dir) {
                for dir in dirs.flatten() {
                    let file = dir.path().join(DROPIN_NAME);
                    if std::fs::read_to_string(&file).is_ok_and(|t| t == DROPIN) {
                        found.push(format!(
                            "{}/{DROPIN_NAME}",
                            dir.file_name().to_string_lossy()
                        ));
                    }
                }
            }
            found.sort();
            self.record(format!("Reload {}", found.join(" ")));
        }

        async fn start_unit(
            &self,
            name: String,
            mode: String,
            #[zbus(connection)] connection: &zbus::Connection,
        ) -> Result<OwnedObjectPath, FakeError> {
            self.queue("StartUnit", name, mode, connection).await
        }

        async fn stop_unit(
            &self,
            name: String,
            mode: String,
            #[zbus(connection)] connection: &zbus::Connection,
        ) -> Result<OwnedObjectPath, FakeError> {
            self.queue("StopUnit", name, mode, connection).await
        }

        async fn get_unit(&self, name: String) -> Result<OwnedObjectPath, FakeError> {
            self.record(format!("GetUnit {name}"));
            let world = lock(&self.world);
            match world.units.get(&name) {
                Some(unit) if unit.exists => object_path(unit_path(&name)),
                _ => Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded."))),
            }
        }

        async fn load_unit(&self, name: String) -> Result<OwnedObjectPath, FakeError> {
            self.record(format!("LoadUnit {name}"));
            if lock(&self.world).units.contains_key(&name) {
                object_path(unit_path(&name))
            } else {
                Err(FakeError::NoSuchUnit(format!("Unit {name} not found.")))
            }
        }

        async fn reset_failed_unit(&self, name: String) -> Result<(), FakeError> {
            self.record(format!("ResetFailedUnit {name}"));
            if let Some(unit) = lock(&self.world).units.get_mut(&name)
                && unit.state == "failed"
            {
                unit.state = "inactive".into();
            }
            Ok(())
        }
    }

    /// A fake `org.freedesktop.systemd1.Unit`.
    struct FakeUnitObject {
        name: String,
        world: Shared,
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
    impl FakeUnitObject {
        #[zbus(property)]
        async fn active_state(&self) -> String {
            lock(&self.world)
                .units
                .get(&self.name)
                .map_or_else(|| "inactive".into(), |u| u.state.clone())
        }

        #[zbus(property)]
        async fn unit_file_state(&self) -> String {
            "disabled".into()
        }
    }

    /// A fake systemd serving `units` on `bus`.
    struct Fake {
        world: Shared,
        _connection: zbus::Connection,
    }

    impl Fake {
        async fn serve(bus: &DbusDaemon, units: &[(&str, FakeUnit)]) -> Self {
            let world: Shared = Arc::new(Mutex::new(World {
                units: units
                    .iter()
                    .map(|(n, u)| ((*n).to_owned(), u.clone()))
                    .collect(),
                ..World::default()
            }));
            let manager = FakeManager {
                world: world.clone(),
                dropin_dir: bus.settings().dropin_dir,
            };
            let mut builder = zbus::connection::Builder::address(bus.address.as_str())
                .and_then(|b| b.name("org.freedesktop.systemd1"))
                .and_then(|b| b.serve_at(MANAGER_PATH, manager))
                .unwrap_or_else(|e| panic!("{e}"));
            for (name, _) in units {
                let object = FakeUnitObject {
                    name: (*name).to_owned(),
                    world: world.clone(),
                };
                builder = builder
                    .serve_at(unit_path(name), object)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            let connection = builder.build().await.unwrap_or_else(|e| panic!("{e}"));
            Self {
                world,
                _connection: connection,
            }
        }

        /// The calls received since the last look.
        fn take_calls(&self) -> Vec<String> {
            std::mem::take(&mut lock(&self.world).calls)
        }

        fn set_state(&self, unit: &str, state: &str) {
            if let Some(u) = lock(&self.world).units.get_mut(unit) {
                u.state = state.into();
            }
        }
    }

    fn ctx(timeout: Duration) -> ActionContext {
        ActionContext {
            group: "web".into(),
            resource: "app".into(),
            node: "node-a".into(),
            reason: StartReason::Start,
            previous_owner: None,
            previous_owner_fenced: false,
            timeout,
        }
    }

    fn driver(bus: &DbusDaemon, unit: &str) -> SystemdDriver {
        SystemdDriver::with_settings(&conf::SystemdResource { unit: unit.into() }, bus.settings())
    }

    fn strings(calls: &[&str]) -> Vec<String> {
        calls.iter().map(|c| (*c).to_owned()).collect()
    }

    #[tokio::test]
    async fn start_writes_the_dropin_reloads_and_waits_for_its_job() {
        let bus = DbusDaemon::start();
        let fake = Fake::serve(&bus, &[("web.service", unit("inactive", DONE_ACTIVE))]).await;
        let d = driver(&bus, "web.service");
        let c = ctx(TIMEOUT);

        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert_eq!(fake.take_calls(), strings(&["GetUnit web.service"]));

        let started = Instant::now();
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        let elapsed = started.elapsed();
        // The job ends 150 ms after the reply; the unit is `activating`
        // until then, so a start that did not wait would have failed.
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert_eq!(
            fake.take_calls(),
            strings(&[
                "Reload web.service.d/50-kvmha.conf",
                "Subscribe",
                "StartUnit web.service replace",
                "GetUnit web.service",
            ])
        );
        let dropin = std::fs::read_to_string(d.dropin_path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(dropin.contains("[Service]\nRestart=no\n"), "{dropin}");
        assert_eq!(
            d.dropin_path(),
            bus.settings()
                .dropin_dir
                .join("web.service.d/50-kvmha.conf")
        );
        assert_eq!(d.probe(&c).await, Probe::Running);
        fake.take_calls();

        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert_eq!(
            fake.take_calls(),
            strings(&[
                "Subscribe",
                "StopUnit web.service replace",
                "GetUnit web.service"
            ])
        );
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        // The drop-in stays: systemd must not restart it later either.
        assert!(d.dropin_path().exists());
        eprintln!("start over D-Bus with a 150 ms job: {elapsed:?}");
    }

    #[tokio::test]
    async fn a_job_that_ends_before_the_reply_is_not_missed() {
        let bus = DbusDaemon::start();
        let fast = Job {
            ends: Ends::BeforeReply,
            ..DONE_ACTIVE
        };
        let fake = Fake::serve(&bus, &[("fast.service", unit("inactive", fast))]).await;
        let d = driver(&bus, "fast.service");
        let started = Instant::now();
        assert_eq!(d.start(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            fake.take_calls()
                .contains(&"StartUnit fast.service replace".to_owned())
        );
    }

    #[tokio::test]
    async fn an_alias_is_started_by_its_job() {
        let bus = DbusDaemon::start();
        let _fake = Fake::serve(
            &bus,
            &[(
                "sshd.service",
                FakeUnit {
                    id: Some("ssh.service"),
                    ..unit("inactive", DONE_ACTIVE)
                },
            )],
        )
        .await;
        let d = driver(&bus, "sshd.service");
        assert_eq!(d.start(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
        assert_eq!(d.stop(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
    }

    #[tokio::test]
    async fn failed_jobs_and_failed_units_are_failures() {
        let bus = DbusDaemon::start();
        let job = |result, state_after| Job {
            result,
            state_after,
            ends: Ends::After(Duration::from_millis(20)),
        };
        let fake = Fake::serve(
            &bus,
            &[
                ("crash.service", unit("inactive", job("failed", "failed"))),
                (
                    "dep.service",
                    unit("inactive", job("dependency", "inactive")),
                ),
                ("flaky.service", unit("inactive", job("done", "failed"))),
                ("oneshot.service", unit("inactive", job("done", "inactive"))),
                ("web.service", unit("inactive", job("done", "active"))),
                (
                    "dirty-stop.service",
                    FakeUnit {
                        stop: job("done", "failed"),
                        ..unit("active", DONE_ACTIVE)
                    },
                ),
            ],
        )
        .await;
        let c = ctx(TIMEOUT);
        let failure = |outcome: ActionOutcome| match outcome {
            ActionOutcome::Failed { message, hard } => {
                assert!(!hard, "{message}");
                message
            }
            other => panic!("unexpected {other:?}"),
        };

        let crash = driver(&bus, "crash.service");
        let message = failure(crash.start(&c).await);
        assert_eq!(
            message,
            "crash.service: the start job ended with result `failed`"
        );
        assert_eq!(
            crash.probe(&c).await,
            Probe::Failed("the unit is in the failed state".into())
        );

        let message = failure(driver(&bus, "dep.service").start(&c).await);
        assert!(message.contains("result `dependency`"), "{message}");

        let message = failure(driver(&bus, "flaky.service").start(&c).await);
        assert!(
            message.contains("ActiveState is `failed` after the start job"),
            "{message}"
        );

        let message = failure(driver(&bus, "oneshot.service").start(&c).await);
        assert!(message.contains("RemainAfterExit=yes"), "{message}");

        // A unit that fails after a good start.
        let web = driver(&bus, "web.service");
        assert_eq!(web.start(&c).await, ActionOutcome::Ok);
        assert_eq!(web.probe(&c).await, Probe::Running);
        fake.set_state("web.service", "failed");
        assert!(matches!(web.probe(&c).await, Probe::Failed(_)));

        // A stop that leaves the unit failed is a stop; the mark is reset.
        fake.take_calls();
        let dirty = driver(&bus, "dirty-stop.service");
        assert_eq!(dirty.stop(&c).await, ActionOutcome::Ok);
        assert_eq!(
            fake.take_calls(),
            strings(&[
                "Subscribe",
                "StopUnit dirty-stop.service replace",
                "GetUnit dirty-stop.service",
                "ResetFailedUnit dirty-stop.service",
            ])
        );
        assert_eq!(dirty.probe(&c).await, Probe::Stopped);
    }

    #[tokio::test]
    async fn a_job_that_never_ends_times_out() {
        let bus = DbusDaemon::start();
        let hang = Job {
            ends: Ends::Never,
            ..DONE_ACTIVE
        };
        let _fake = Fake::serve(&bus, &[("hang.service", unit("inactive", hang))]).await;
        let d = driver(&bus, "hang.service");
        let started = Instant::now();
        assert_eq!(
            d.start(&ctx(Duration::from_millis(300))).await,
            ActionOutcome::TimedOut
        );
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        // The job still runs in systemd: the unit is activating, unknown.
        assert!(matches!(
            d.probe(&ctx(TIMEOUT)).await,
            Probe::Unknown(m) if m.contains("activating")
        ));
    }

    #[tokio::test]
    async fn a_missing_unit_is_a_hard_failure_and_stopped() {
        let bus = DbusDaemon::start();
        let fake = Fake::serve(
            &bus,
            &[(
                "missing.service",
                FakeUnit {
                    exists: false,
                    ..unit("inactive", DONE_ACTIVE)
                },
            )],
        )
        .await;
        let d = driver(&bus, "missing.service");
        let c = ctx(TIMEOUT);
        match d.start(&c).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard, "{message}");
                assert!(
                    message.contains("org.freedesktop.systemd1.NoSuchUnit"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        fake.take_calls();
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert_eq!(
            fake.take_calls(),
            strings(&["GetUnit missing.service", "LoadUnit missing.service"])
        );
    }

    #[tokio::test]
    async fn probe_maps_active_states() {
        let bus = DbusDaemon::start();
        let fake = Fake::serve(&bus, &[("db.service", unit("inactive", DONE_ACTIVE))]).await;
        let d = driver(&bus, "db.service");
        let c = ctx(TIMEOUT);
        for (state, expected) in [
            ("active", Probe::Running),
            ("reloading", Probe::Running),
            ("inactive", Probe::Stopped),
            (
                "failed",
                Probe::Failed("the unit is in the failed state".into()),
            ),
            (
                "activating",
                Probe::Unknown("the unit is activating".into()),
            ),
            (
                "deactivating",
                Probe::Unknown("the unit is deactivating".into()),
            ),
        ] {
            fake.set_state("db.service", state);
            assert_eq!(d.probe(&c).await, expected, "{state}");
        }
    }

    #[tokio::test]
    async fn other_unit_types_get_no_dropin() {
        let bus = DbusDaemon::start();
        let fake = Fake::serve(&bus, &[("data.mount", unit("inactive", DONE_ACTIVE))]).await;
        let d = driver(&bus, "data.mount");
        assert_eq!(d.start(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
        assert_eq!(
            fake.take_calls(),
            strings(&[
                "Subscribe",
                "StartUnit data.mount replace",
                "GetUnit data.mount"
            ])
        );
        assert!(!bus.settings().dropin_dir.exists());
    }

    #[tokio::test]
    async fn bus_errors_are_failures_and_unknown() {
        let c = ctx(TIMEOUT);
        // No bus at all.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let nowhere = SystemdDriver::with_settings(
            &conf::SystemdResource {
                unit: "web.service".into(),
            },
            Settings {
                bus: Bus::Address(format!("unix:path={}", dir.path().join("no-bus").display())),
                dropin_dir: dir.path().join("dropins"),
            },
        );
        assert!(
            matches!(nowhere.probe(&c).await, Probe::Unknown(m) if m.contains("cannot connect"))
        );
        assert!(matches!(
            nowhere.start(&c).await,
            ActionOutcome::Failed { hard: false, .. }
        ));
        assert!(matches!(
            nowhere.stop(&c).await,
            ActionOutcome::Failed { hard: false, .. }
        ));

        // A bus without systemd on it.
        let bus = DbusDaemon::start();
        let d = driver(&bus, "web.service");
        let p = d.probe(&c).await;
        assert!(
            matches!(&p, Probe::Unknown(m) if m.contains("NameHasNoOwner")),
            "{p:?}"
        );
        assert!(matches!(
            d.stop(&c).await,
            ActionOutcome::Failed { hard: false, .. }
        ));

        // systemd arrives on the same bus: the kept connection works.
        let units = [("web.service", unit("active", DONE_ACTIVE))];
        let fake = Fake::serve(&bus, &units).await;
        assert_eq!(d.probe(&c).await, Probe::Running);

        // The bus goes away: unknown. It comes back on the same socket: the
        // driver connects again.
        drop(fake);
        let mut bus = bus;
        bus.restart();
        assert!(matches!(d.probe(&c).await, Probe::Unknown(_)));
        let _fake = Fake::serve(&bus, &units).await;
        assert_eq!(d.probe(&c).await, Probe::Running);
    }

    #[tokio::test]
    async fn an_invalid_unit_name_is_a_hard_failure_and_writes_nothing() {
        let bus = DbusDaemon::start();
        let fake = Fake::serve(&bus, &[]).await;
        let c = ctx(TIMEOUT);
        for name in ["../../etc/evil.service", "", "web service.service", "noext"] {
            let d = driver(&bus, name);
            assert!(
                matches!(d.start(&c).await, ActionOutcome::Failed { hard: true, .. }),
                "{name}"
            );
            assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
            assert_eq!(d.probe(&c).await, Probe::Stopped);
        }
        assert!(fake.take_calls().is_empty());
        assert!(!bus.settings().dropin_dir.exists());
        assert!(valid_unit_name("getty@tty1.service"));
        assert!(valid_unit_name("dev-disk-by\\x2did-x.device"));
    }
}
