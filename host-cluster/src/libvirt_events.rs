//! libvirt's event loop and domain lifecycle events.
//!
//! `virt` 0.5 wraps the default event loop but not
//! `virConnectDomainEventRegisterAny`, so the callback is registered here
//! through `virt::sys`. This module is the only unsafe code of the crate;
//! each unsafe block says why it is sound.
//!
//! - [`ensure_event_loop`] registers libvirt's default event loop
//!   implementation and runs it on a thread of its own, once per process.
//!   It must run before the first connection is opened: connections opened
//!   before it deliver no events and get no keepalive.
//! - [`Registration`] is one lifecycle callback on one connection. Events
//!   arrive on the event loop thread and are forwarded, as [`DomainEvent`]s,
//!   into a tokio `broadcast` channel; dropping the registration removes
//!   the callback (it holds a reference on the connection, so it must go
//!   before the connection is closed).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::fmt;
use std::ptr;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::sys;

/// What happened to a domain (libvirt's `virDomainEventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A persistent definition was added or changed.
    Defined,
    /// A persistent definition was removed.
    Undefined,
    /// The domain started.
    Started,
    /// The domain was paused.
    Suspended,
    /// The domain was resumed.
    Resumed,
    /// The domain stopped (shut off, destroyed, crashed, failed, ...).
    Stopped,
    /// The guest shut down (the domain may still be running).
    Shutdown,
    /// The guest suspended itself (ACPI S3/S4).
    PmSuspended,
    /// The guest crashed (panic).
    Crashed,
    /// An event type this version does not know.
    Other(i32),
}

impl EventKind {
    fn from_raw(raw: c_int) -> Self {
        match u32::try_from(raw) {
            Ok(sys::VIR_DOMAIN_EVENT_DEFINED) => Self::Defined,
            Ok(sys::VIR_DOMAIN_EVENT_UNDEFINED) => Self::Undefined,
            Ok(sys::VIR_DOMAIN_EVENT_STARTED) => Self::Started,
            Ok(sys::VIR_DOMAIN_EVENT_SUSPENDED) => Self::Suspended,
            Ok(sys::VIR_DOMAIN_EVENT_RESUMED) => Self::Resumed,
            Ok(sys::VIR_DOMAIN_EVENT_STOPPED) => Self::Stopped,
            Ok(sys::VIR_DOMAIN_EVENT_SHUTDOWN) => Self::Shutdown,
            Ok(sys::VIR_DOMAIN_EVENT_PMSUSPENDED) => Self::PmSuspended,
            Ok(sys::VIR_DOMAIN_EVENT_CRASHED) => Self::Crashed,
            _ => Self::Other(raw),
        }
    }

    /// Lower-case name, as in `virsh event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Defined => "defined",
            Self::Undefined => "undefined",
            Self::Started => "started",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
            Self::Stopped => "stopped",
            Self::Shutdown => "shutdown",
            Self::PmSuspended => "pmsuspended",
            Self::Crashed => "crashed",
            Self::Other(_) => "unknown",
        }
    }
}

/// One lifecycle event of one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEvent {
    /// Domain name.
    pub name: String,
    /// The domain's id when the event was raised (`None` for an inactive
    /// domain). Every run of a domain gets a new id, so an event can be
    /// told apart from one of an earlier run.
    pub id: Option<u32>,
    /// What happened.
    pub kind: EventKind,
    /// libvirt's detail code for `kind` (see [`DomainEvent::detail_text`]).
    pub detail: i32,
}

impl DomainEvent {
    /// libvirt's detail, in words (`io-error`, `destroyed`, `panicked`...).
    pub fn detail_text(&self) -> &'static str {
        let Ok(d) = u32::try_from(self.detail) else {
            return "unknown";
        };
        match self.kind {
            EventKind::Defined | EventKind::Undefined | EventKind::Other(_) => "",
            EventKind::Started => match d {
                sys::VIR_DOMAIN_EVENT_STARTED_BOOTED => "booted",
                sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED => "migrated",
                sys::VIR_DOMAIN_EVENT_STARTED_RESTORED => "restored",
                sys::VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT => "from-snapshot",
                sys::VIR_DOMAIN_EVENT_STARTED_WAKEUP => "wakeup",
                sys::VIR_DOMAIN_EVENT_STARTED_RECREATED => "recreated",
                _ => "unknown",
            },
            EventKind::Suspended => match d {
                sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED => "paused",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED => "migrated",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => "io-error",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG => "watchdog",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_RESTORED => "restored",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT => "from-snapshot",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR => "api-error",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY => "postcopy",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED => "postcopy-failed",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_GUEST_SHUTDOWN => "guest-shutdown",
                _ => "unknown",
            },
            EventKind::Resumed => match d {
                sys::VIR_DOMAIN_EVENT_RESUMED_UNPAUSED => "unpaused",
                sys::VIR_DOMAIN_EVENT_RESUMED_MIGRATED => "migrated",
                sys::VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT => "from-snapshot",
                sys::VIR_DOMAIN_EVENT_RESUMED_POSTCOPY => "postcopy",
                sys::VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED => "postcopy-failed",
                _ => "unknown",
            },
            EventKind::Stopped => match d {
                sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => "shutdown",
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => "destroyed",
                sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => "crashed",
                sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => "migrated",
                sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => "saved",
                sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => "failed",
                sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT => "from-snapshot",
                sys::VIR_DOMAIN_EVENT_STOPPED_RECREATED => "recreated",
                _ => "unknown",
            },
            EventKind::Shutdown => match d {
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED => "finished",
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_GUEST => "guest",
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_HOST => "host",
                _ => "unknown",
            },
            EventKind::PmSuspended => match d {
                sys::VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY => "memory",
                sys::VIR_DOMAIN_EVENT_PMSUSPENDED_DISK => "disk",
                _ => "unknown",
            },
            EventKind::Crashed => match d {
                sys::VIR_DOMAIN_EVENT_CRASHED_PANICKED => "panicked",
                sys::VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED => "crashloaded",
                _ => "unknown",
            },
        }
    }
}

impl fmt::Display for DomainEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail_text() {
            "" => write!(f, "{}", self.kind.as_str()),
            detail => write!(f, "{} ({detail})", self.kind.as_str()),
        }
    }
}

/// libvirt's event loop could not be set up.
#[derive(Clone, Debug, thiserror::Error)]
#[error("libvirt event loop: {0}")]
pub struct EventLoopError(String);

static EVENT_LOOP: OnceLock<Result<(), EventLoopError>> = OnceLock::new();

/// Register libvirt's default event loop and run it on the thread
/// `libvirt-events`, once per process; later calls return the first
/// call's result. Also silences libvirt's own printing of every error to
/// stderr: callers log the errors they get.
pub fn ensure_event_loop() -> Result<(), EventLoopError> {
    EVENT_LOOP
        .get_or_init(|| {
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl()
                .map_err(|e| EventLoopError(e.message().to_owned()))?;
            thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        if let Err(e) = virt::event::event_run_default_impl() {
                            tracing::error!(error = %e.message(), "libvirt event loop failed");
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
                .map_err(|e| EventLoopError(format!("cannot start its thread: {e}")))?;
            tracing::debug!("libvirt event loop running");
            Ok(())
        })
        .clone()
}

/// What the callback forwards events into; owned by libvirt between
/// registration and `free_sink`.
struct Sink {
    events: broadcast::Sender<DomainEvent>,
}

/// The C type of a lifecycle callback (`virConnectDomainEventCallback`).
type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
/// The type `virConnectDomainEventRegisterAny` is declared with.
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// A lifecycle-event callback registered on one connection; removed when
/// dropped.
#[derive(Debug)]
pub struct Registration {
    /// Our own reference on the connection, so that it outlives the
    /// callback whatever order the caller drops things in.
    conn: Connect,
    callback_id: c_int,
}

impl Registration {
    /// Forward every domain lifecycle event of `conn` into `events`.
    pub fn lifecycle(
        conn: &Connect,
        events: broadcast::Sender<DomainEvent>,
    ) -> Result<Self, virt::error::Error> {
        let conn = conn.clone();
        let opaque = Box::into_raw(Box::new(Sink { events })).cast::<c_void>();
        // SAFETY: this is the cast C code does with VIR_DOMAIN_EVENT_CALLBACK:
        // libvirt stores the pointer as the generic type and casts it back to
        // `virConnectDomainEventCallback` (our exact signature) before calling
        // it for VIR_DOMAIN_EVENT_ID_LIFECYCLE. Both are C function pointers of
        // the same size; the generic one is never called as such.
        let callback =
            unsafe { std::mem::transmute::<LifecycleCallback, GenericCallback>(on_lifecycle) };
        // SAFETY: `conn` is a live connection we hold a reference on; a null
        // domain means "all domains"; `opaque` is a valid `Sink` that libvirt
        // owns from here on and hands to `free_sink` exactly once, after the
        // last callback using it.
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                Some(callback),
                opaque,
                Some(free_sink),
            )
        };
        if id < 0 {
            let err = virt::error::Error::last_error();
            // SAFETY: registration failed, so libvirt kept neither the sink
            // nor will it call `free_sink` for it (its error paths inhibit
            // the free callback): the box from `Box::into_raw` above is ours
            // again and freed exactly once, here.
            drop(unsafe { Box::from_raw(opaque.cast::<Sink>()) });
            return Err(err);
        }
        Ok(Self {
            conn,
            callback_id: id,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `self.conn` still holds its reference on the connection,
        // and `callback_id` came from registering on that connection. libvirt
        // frees the sink through `free_sink` once no dispatch uses it.
        let rc = unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.callback_id)
        };
        if rc < 0 {
            // A lost connection: the callback is removed locally all the same.
            tracing::debug!(
                error = %virt::error::Error::last_error().message(),
                "removing the libvirt event callback"
            );
        }
    }
}

/// Called by libvirt on the event loop thread for each lifecycle event.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if dom.is_null() || opaque.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the `Sink` boxed in `Registration::lifecycle`;
    // libvirt keeps it alive until it calls `free_sink`, which it never does
    // while a callback with it runs. We only read it (the sender is `Sync`).
    let sink = unsafe { &*opaque.cast::<Sink>() };
    // SAFETY: `dom` is a valid domain for the duration of the callback.
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    if name_ptr.is_null() {
        return 0;
    }
    // SAFETY: a non-null name from libvirt is a NUL-terminated string owned
    // by `dom`, which outlives this borrow (copied out at once).
    let name = unsafe { CStr::from_ptr(name_ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `dom` is valid (see above); this only reads its id field.
    let raw_id = unsafe { sys::virDomainGetID(dom) };
    let event = DomainEvent {
        name,
        // libvirt returns (unsigned) -1 for an inactive domain.
        id: (raw_id != u32::MAX).then_some(raw_id),
        kind: EventKind::from_raw(event),
        detail,
    };
    tracing::debug!(vm = %event.name, id = ?event.id, event = %event, "libvirt lifecycle event");
    // No receiver is fine: nobody is watching right now.
    let _ = sink.events.send(event);
    0
}

/// libvirt's free callback for a `Sink`.
unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from `Box::into_raw` in
        // `Registration::lifecycle`, and libvirt calls this exactly once per
        // successful registration.
        drop(unsafe { Box::from_raw(opaque.cast::<Sink>()) });
    }
}
