//! GPU faults as [`Error`] values: wgpu's uncaptured errors (out of memory, validation) and the
//! device-lost callback are recorded here instead of panicking (wgpu's default), and surface at
//! the next allocation, dispatch or readback as [`Error::OutOfMemory`], [`Error::Validation`]
//! or [`Error::DeviceLost`], naming the adapter and the op. A lost device stays lost: the
//! caller re-creates its [`Context`] (`pigment serve`'s worker does).
//!
//! Test hook ([`Context::inject_fault`], hidden): fail the next allocation as an out-of-memory
//! would, or destroy the device (a real loss, through wgpu's own device-lost callback).

use super::Context;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A fault the test hook can cause.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next tensor allocation fails as an out-of-memory would.
    NextAllocation,
    /// `wgpu::Device::destroy`: every later use reports a lost device.
    DeviceLost,
}

#[derive(Default)]
pub(crate) struct Faults {
    lost: AtomicBool,
    lost_reason: Mutex<String>,
    /// The first uncaptured wgpu error since the last check, with the op running when it came.
    pending: Mutex<Option<Error>>,
    fail_next_alloc: AtomicBool,
    /// The kernel last dispatched (what was running when an asynchronous error arrives).
    last_op: Mutex<&'static str>,
    adapter: String,
}

impl Faults {
    /// Record errors and loss of `device` here.
    pub(crate) fn install(device: &wgpu::Device, adapter: &str) -> Arc<Faults> {
        let f = Arc::new(Faults { adapter: adapter.to_string(), ..Default::default() });
        let on_error = f.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| on_error.record(e)));
        let on_lost = f.clone();
        device.set_device_lost_callback(move |reason, msg| on_lost.mark_lost(format!("{reason:?}: {msg}")));
        f
    }

    fn op(&self) -> String {
        match *self.last_op.lock().unwrap() {
            "" => "GPU work".into(),
            k => format!("kernel '{k}' (or work recorded just before it)"),
        }
    }

    fn record(&self, e: wgpu::Error) {
        let (adapter, op) = (self.adapter.clone(), self.op());
        let err = match e {
            wgpu::Error::OutOfMemory { source } => Error::OutOfMemory { adapter, op, detail: source.to_string() },
            wgpu::Error::Validation { description, .. } => Error::Validation { adapter, op, detail: description },
            other => Error::Validation { adapter, op, detail: other.to_string() },
        };
        let mut p = self.pending.lock().unwrap();
        if p.is_none() {
            *p = Some(err);
        }
    }

    fn mark_lost(&self, reason: String) {
        *self.lost_reason.lock().unwrap() = reason;
        self.lost.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_op(&self, kernel: &'static str) {
        *self.last_op.lock().unwrap() = kernel;
    }

    fn lost_error(&self, op: &str) -> Error {
        Error::DeviceLost { adapter: self.adapter.clone(), op: op.to_string(), detail: self.lost_reason.lock().unwrap().clone() }
    }
}

impl Context {
    /// Whether the device is lost (then only a new [`Context`] can run anything).
    pub fn is_lost(&self) -> bool {
        self.faults.lost.load(Ordering::SeqCst)
    }

    /// The fault recorded since the last check, if any: a lost device (for good), else the
    /// first out-of-memory or validation error wgpu reported. `op` names what is being done.
    pub fn check_faults(&self, op: &str) -> Result<()> {
        if self.is_lost() {
            return Err(self.faults.lost_error(op));
        }
        match self.faults.pending.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Before making a buffer of `bytes` for `what`: a lost device or an injected failure.
    pub(crate) fn check_alloc(&self, what: &str, bytes: u64) -> Result<()> {
        if self.is_lost() {
            return Err(self.faults.lost_error(&format!("allocating {what}")));
        }
        if self.faults.fail_next_alloc.swap(false, Ordering::SeqCst) {
            return Err(Error::OutOfMemory {
                adapter: self.info.name.clone(),
                op: format!("allocating {what} ({bytes} bytes)"),
                detail: "allocation failed (injected by the test hook)".into(),
            });
        }
        Ok(())
    }

    /// After making a buffer: natively wgpu reports an allocation failure at once, so it is
    /// named with the allocation.
    pub(crate) fn check_alloc_result(&self, what: &str, bytes: u64) -> Result<()> {
        let mut p = self.faults.pending.lock().unwrap();
        // Only an out-of-memory is this allocation's; another error waits for the next check.
        if matches!(*p, Some(Error::OutOfMemory { .. })) {
            if let Some(Error::OutOfMemory { adapter, detail, .. }) = p.take() {
                return Err(Error::OutOfMemory { adapter, op: format!("allocating {what} ({bytes} bytes)"), detail });
            }
        }
        Ok(())
    }

    /// Test hook: make a fault happen (see [`Fault`]).
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        match fault {
            Fault::NextAllocation => self.faults.fail_next_alloc.store(true, Ordering::SeqCst),
            Fault::DeviceLost => {
                self.device.destroy();
                #[cfg(not(target_arch = "wasm32"))]
                let _ = self.device.poll(wgpu::PollType::Poll);
                // wgpu calls the lost callback on destroy; make sure the state is set either way.
                if !self.is_lost() {
                    self.faults.mark_lost("Destroyed: the device was destroyed (injected by the test hook)".into());
                }
            }
        }
    }
}
