//! What the root-only integration tests share: whether they can run here, and where the
//! examples they start were built.
#![allow(dead_code)] // each test binary uses its own share

use std::path::PathBuf;
use std::process::Command;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether `tool` is on the PATH.
pub fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The target directory this test binary was built in (`<target>/<profile>/deps/<test>`):
/// the examples the test starts are built there too.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}
