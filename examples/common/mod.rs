//! Code shared by the examples (`echo_server`, `echo_client`, `copybreak_tune`) and the
//! integration tests that run them as library calls (`tests/echo.rs`). Each includes this
//! directory with `#[path = ".../common/mod.rs"] mod common;` and uses what it needs.
#![allow(dead_code)]

pub mod embedded;
pub mod listeners;
pub mod pattern;
pub mod report;
pub mod setup;
pub mod size;
