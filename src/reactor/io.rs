//! Socket readiness on a reactor: an epoll instance (through `mio`) per reactor, and
//! [`Async`], a registered non-blocking I/O object whose operations are futures.
//!
//! Registration is edge-triggered. A source is marked readable/writable when epoll says
//! so and stays marked until an operation on it returns `WouldBlock`; only then does a
//! future wait. Everything here is reactor-local (`!Send`).

use super::with_current;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[derive(Default)]
struct SourceState {
    readable: bool,
    writable: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

pub(crate) struct Driver {
    poll: RefCell<mio::Poll>,
    events: RefCell<mio::Events>,
    sources: RefCell<Vec<Option<Rc<RefCell<SourceState>>>>>,
    free: RefCell<Vec<usize>>,
    /// Sources whose readiness somebody waits for (sockets), as opposed to fds that are
    /// registered only to wake a parked reactor (completion eventfds).
    waited: Cell<usize>,
}

impl Driver {
    pub(crate) fn new(poll: mio::Poll) -> Driver {
        Driver {
            poll: RefCell::new(poll),
            events: RefCell::new(mio::Events::with_capacity(256)),
            sources: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            waited: Cell::new(0),
        }
    }

    pub(crate) fn has_sources(&self) -> bool {
        self.waited.get() > 0
    }

    /// Waits up to `timeout` for events and wakes the futures they concern.
    pub(crate) fn poll(&self, timeout: Option<Duration>) -> usize {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::warn!(error = %e, "epoll_wait failed");
            return 0;
        }
        let mut woken = 0;
        let sources = self.sources.borrow();
        let mut wake = Vec::new();
        for ev in events.iter() {
            let Some(Some(src)) = sources.get(ev.token().0) else {
                continue;
            };
            let mut s = src.borrow_mut();
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                s.readable = true;
                if let Some(w) = s.read_waker.take() {
                    wake.push(w);
                }
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                s.writable = true;
                if let Some(w) = s.write_waker.take() {
                    wake.push(w);
                }
            }
        }
        drop(sources);
        drop(events);
        for w in wake {
            w.wake();
            woken += 1;
        }
        woken
    }

    fn add(
        &self,
        source: &mut dyn mio::event::Source,
        interest: mio::Interest,
        waited: bool,
    ) -> io::Result<(usize, Rc<RefCell<SourceState>>)> {
        let state = Rc::new(RefCell::new(SourceState::default()));
        let index = {
            let mut sources = self.sources.borrow_mut();
            match self.free.borrow_mut().pop() {
                Some(i) => {
                    sources[i] = Some(state.clone());
                    i
                }
                None => {
                    sources.push(Some(state.clone()));
                    sources.len() - 1
                }
            }
        };
        if let Err(e) = self
            .poll
            .borrow()
            .registry()
            .register(source, mio::Token(index), interest)
        {
            self.sources.borrow_mut()[index] = None;
            self.free.borrow_mut().push(index);
            return Err(e);
        }
        if waited {
            self.waited.set(self.waited.get() + 1);
        }
        Ok((index, state))
    }

    fn remove(&self, source: &mut dyn mio::event::Source, index: usize, waited: bool) {
        let _ = self.poll.borrow().registry().deregister(source);
        if let Some(slot) = self.sources.borrow_mut().get_mut(index) {
            *slot = None;
        }
        self.free.borrow_mut().push(index);
        if waited {
            self.waited.set(self.waited.get() - 1);
        }
    }
}

/// A non-blocking I/O object registered with the current reactor.
pub struct Async<T: mio::event::Source> {
    io: Option<T>,
    index: usize,
    state: Rc<RefCell<SourceState>>,
}

impl<T: mio::event::Source> Async<T> {
    /// Registers `io` (already non-blocking) with the current reactor.
    pub fn new(mut io: T) -> io::Result<Async<T>> {
        let (index, state) = with_current(|r| {
            r.io.add(
                &mut io,
                mio::Interest::READABLE | mio::Interest::WRITABLE,
                true,
            )
        })?;
        Ok(Async {
            io: Some(io),
            index,
            state,
        })
    }

    /// The wrapped object.
    pub fn get_ref(&self) -> &T {
        self.io.as_ref().expect("present until drop")
    }

    /// The wrapped object, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        self.io.as_mut().expect("present until drop")
    }

    /// Ready when the object may be readable.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.borrow_mut();
        if s.readable {
            Poll::Ready(())
        } else {
            s.read_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Ready when the object may be writable.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.borrow_mut();
        if s.writable {
            Poll::Ready(())
        } else {
            s.write_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Forget readability until epoll reports it again (after `WouldBlock`).
    pub fn clear_readable(&self) {
        self.state.borrow_mut().readable = false;
    }

    /// Forget writability until epoll reports it again (after `WouldBlock`).
    pub fn clear_writable(&self) {
        self.state.borrow_mut().writable = false;
    }

    /// Runs `op` until it does not return `WouldBlock`, waiting for readability between
    /// attempts.
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.clear_readable();
                    std::future::poll_fn(|cx| self.poll_readable(cx)).await;
                }
                other => return other,
            }
        }
    }

    /// Runs `op` until it does not return `WouldBlock`, waiting for writability between
    /// attempts.
    pub async fn write_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.clear_writable();
                    std::future::poll_fn(|cx| self.poll_writable(cx)).await;
                }
                other => return other,
            }
        }
    }
}

impl<T: mio::event::Source> Drop for Async<T> {
    fn drop(&mut self) {
        if let Some(mut io) = self.io.take() {
            let index = self.index;
            let _ = super::try_with_current(|r| r.io.remove(&mut io, index, true));
        }
    }
}

/// An fd registered only so that its readiness wakes a parked reactor (a completion
/// ring's eventfd, for example). Nobody waits on it; the owner polls its own queue.
pub struct WakeFd {
    fd: RawFd,
    index: usize,
}

impl WakeFd {
    /// Registers `fd` for readability on the current reactor.
    pub fn register(fd: RawFd) -> io::Result<WakeFd> {
        let (index, _) = with_current(|r| {
            r.io.add(
                &mut mio::unix::SourceFd(&fd),
                mio::Interest::READABLE,
                false,
            )
        })?;
        Ok(WakeFd { fd, index })
    }
}

impl Drop for WakeFd {
    fn drop(&mut self) {
        let fd = self.fd;
        let index = self.index;
        let _ =
            super::try_with_current(|r| r.io.remove(&mut mio::unix::SourceFd(&fd), index, false));
    }
}

/// Reads into `buf` from a registered stream, waiting as needed. `Ok(0)` is end of file.
pub async fn read<T>(src: &Async<T>, buf: &mut [u8]) -> io::Result<usize>
where
    T: mio::event::Source,
    for<'a> &'a T: io::Read,
{
    src.read_with(|mut io| io::Read::read(&mut io, buf)).await
}

/// Writes all of `buf` to a registered stream, waiting as needed.
pub async fn write_all<T>(src: &Async<T>, mut buf: &[u8]) -> io::Result<()>
where
    T: mio::event::Source,
    for<'a> &'a T: io::Write,
{
    while !buf.is_empty() {
        let n = src
            .write_with(|mut io| io::Write::write(&mut io, buf))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}
