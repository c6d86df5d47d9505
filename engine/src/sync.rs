//! Synchronization shim: `loom`'s types under `cfg(loom)`, the real ones otherwise, so the
//! reference-counting core can be model-checked without changing its code.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A mutex with parking_lot's infallible `lock()` in both worlds.
#[cfg(not(loom))]
pub(crate) type Mutex<T> = parking_lot::Mutex<T>;

#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // A poisoned lock means a model thread panicked: the model has failed already.
        self.0.lock().unwrap()
    }
}

/// A cell holding an `Arc<T>` that readers load without taking a lock (`arc_swap`), and
/// that writers replace whole. Under loom it is a mutex, which loom can explore.
#[cfg(not(loom))]
pub(crate) struct SwapCell<T>(arc_swap::ArcSwap<T>);

#[cfg(not(loom))]
impl<T> SwapCell<T> {
    pub(crate) fn new(value: T) -> Self {
        SwapCell(arc_swap::ArcSwap::from_pointee(value))
    }

    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<std::sync::Arc<T>> {
        self.0.load()
    }

    pub(crate) fn store(&self, value: T) {
        self.0.store(std::sync::Arc::new(value))
    }
}

#[cfg(loom)]
pub(crate) struct SwapCell<T>(Mutex<std::sync::Arc<T>>);

#[cfg(loom)]
impl<T> SwapCell<T> {
    pub(crate) fn new(value: T) -> Self {
        SwapCell(Mutex::new(std::sync::Arc::new(value)))
    }

    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        self.0.lock().clone()
    }

    pub(crate) fn store(&self, value: T) {
        *self.0.lock() = std::sync::Arc::new(value)
    }
}
