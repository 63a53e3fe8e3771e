//! Time for reactors: a real monotonic clock, or a manual one that tests advance by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Nanoseconds since the clock's origin. All reactor timers are expressed in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    /// This moment plus `d`, saturating.
    pub fn after(self, d: Duration) -> Nanos {
        Nanos(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The time source shared by a set of reactors.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Monotonic time from the CPU's time-stamp counter (the normal case): reactors read
    /// it on every loop iteration that has timers, where `clock_gettime` costs several
    /// percent of a core (in a VM especially). quanta calibrates the counter against the
    /// OS clock and falls back to it when the counter is not invariant.
    Real { tsc: quanta::Clock, origin: u64 },
    /// Time that moves only when a test calls [`Clock::advance`].
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A real clock whose origin is now.
    pub fn real() -> Clock {
        let tsc = quanta::Clock::new();
        let origin = tsc.raw();
        Clock::Real { tsc, origin }
    }

    /// A manual clock at zero.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Nanos {
        match self {
            Clock::Real { tsc, origin } => Nanos(tsc.delta_as_nanos(*origin, tsc.raw())),
            Clock::Manual(t) => Nanos(t.load(Ordering::Acquire)),
        }
    }

    /// Moves a manual clock forward; a no-op on a real one.
    pub fn advance(&self, d: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(d.as_nanos() as u64, Ordering::AcqRel);
        }
    }

    /// True for a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}

/// The process's tick source for I/O statistics: the CPU's time-stamp counter where it
/// is invariant (quanta falls back to the OS's monotonic clock, in nanoseconds, where it
/// is not), read raw — no scaling — as SPDK's `spdk_get_ticks()` is. Real time even
/// under a manual reactor clock: statistics never steer behaviour.
fn tick_clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The current tick ([`tick_rate`] per second).
#[inline]
pub fn ticks() -> u64 {
    tick_clock().raw()
}

/// Ticks per second of [`ticks`] (SPDK's `tick_rate` / `tsc_rate`), from quanta's
/// calibration of the counter against the OS clock.
pub fn tick_rate() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        const N: u64 = 1 << 40;
        let ns = tick_clock().delta_as_nanos(0, N).max(1);
        ((N as u128 * 1_000_000_000) / ns as u128).min(u64::MAX as u128) as u64
    })
}
