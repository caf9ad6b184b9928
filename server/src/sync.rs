//! Locking that survives a panic elsewhere: every `Mutex` of the service holds plain data
//! whose invariants hold between statements, so a poisoned lock is taken as it is.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
