//! The protocol: requests, replies and their results, as JSON.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One request: a JSON object on one line whose `cmd` field names the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Reads a setting by its sysctl name ([`NetDma::get`](crate::NetDma::get)).
    SysctlGet {
        /// The sysctl name, e.g. `net.ipv4.tcp_dma_copybreak`.
        key: String,
    },
    /// Changes a setting by its sysctl name ([`NetDma::set`](crate::NetDma::set)); on error nothing changes.
    SysctlSet {
        /// The sysctl name.
        key: String,
        /// The new value in sysctl form (a JSON number is accepted too).
        #[serde(deserialize_with = "string_or_number")]
        value: String,
    },
    /// Every key with its value, as `sysctl -a`.
    SysctlAll,
    /// Enables offload ([`NetDma::enable`](crate::NetDma::enable)).
    DmaEnable,
    /// Disables offload and lets go of every DMA device ([`NetDma::disable`](crate::NetDma::disable)).
    DmaDisable,
    /// The engine's devices, their channels and what pins them.
    DevList,
    /// Unregisters a device: refused while pinned, unless `force`.
    DevRemove {
        /// The device's id (`dev0`) or its provider's name if unique (`swdma`).
        name: String,
        /// Hot removal even while pinned ([`Engine::remove_device`](dmaengine::Engine::remove_device)).
        #[serde(default)]
        force: bool,
    },
    /// Configuration, state, receive counters and the engine ([`NetDma::snapshot`](crate::NetDma::snapshot)).
    Stats,
}

/// Every command's `cmd` name.
pub const COMMANDS: &[&str] = &[
    "sysctl_get",
    "sysctl_set",
    "sysctl_all",
    "dma_enable",
    "dma_disable",
    "dev_list",
    "dev_remove",
    "stats",
];

pub(super) fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "`value` must be a string or a number, not {other}"
        ))),
    }
}

/// The reply to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command was carried out.
    pub ok: bool,
    /// The command's result (see the [module documentation](crate::ctl)), when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

impl Response {
    pub(super) fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(ErrorKind::Unavailable, format!("cannot serialize: {e}")),
        }
    }

    pub(super) fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(ErrorReply {
                kind,
                message: message.into(),
            }),
        }
    }

    pub(super) fn refused(message: impl Into<String>) -> Response {
        Response::err(ErrorKind::Refused, message)
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Response {
        Response::err(ErrorKind::BadRequest, message)
    }
}

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, naming the key or device at fault.
    pub message: String,
}

/// The kinds of failure a reply reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Understood and declined: a bad key or value, a busy or unknown device. Nothing
    /// changed.
    Refused,
    /// Not a request: malformed JSON, unknown command, missing field, line too long.
    BadRequest,
    /// The server cannot serve this connection now (too many connections).
    Unavailable,
}

/// One line of `sysctl_all`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlEntry {
    /// The sysctl name.
    pub key: String,
    /// Its value in sysctl form.
    pub value: String,
    /// Whether `sysctl_set` may change it.
    pub writable: bool,
    /// The accepted values.
    pub range: String,
}

/// The offload's state after `dma_enable` or `dma_disable`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmaState {
    /// Whether offload is enabled now.
    pub enabled: bool,
    /// Whether this request changed it (false: it was so already).
    pub changed: bool,
    /// Whether netdma holds its engine client (and so pins devices) now.
    pub holds_client: bool,
    /// The sum of all devices' references (0: nothing pinned, every device removable).
    pub references: usize,
    /// Devices registered with the engine.
    pub devices: usize,
    /// A remark for the operator, e.g. that no device is left to offload to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One channel in a [`DeviceInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel's name (`dma0`).
    pub name: String,
    /// Users of the channel (sysfs `in_use`).
    pub in_use: usize,
    /// Per-CPU table slots pointing at it.
    pub table_count: usize,
    /// Memcpy descriptors submitted.
    pub memcpy_count: u64,
    /// Bytes submitted.
    pub bytes_transferred: u64,
    /// Transfers that ended in error.
    pub errors: u64,
}

/// One device of `dev_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device's id (`dev0`).
    pub id: String,
    /// Its provider's name (`swdma`).
    pub name: String,
    /// Number of channels.
    pub channels: usize,
    /// The module pin: one reference per channel per user (as `lsmod`'s use count); the
    /// device can be unregistered only at 0. (A channel's users are its own
    /// [`ChannelInfo::in_use`].)
    pub references: usize,
    /// Public clients pinning it.
    pub clients: usize,
    /// Channels of it held privately.
    pub private_channels: usize,
    /// Whether netdma's offload is among the clients pinning it.
    pub netdma_holds: bool,
    /// Its channels.
    pub channel_list: Vec<ChannelInfo>,
}

/// The result of `dev_remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The removed device's id.
    pub id: String,
    /// Its provider's name.
    pub name: String,
    /// Whether it was a forced (hot) removal.
    pub forced: bool,
    /// References the removal dropped (0 for an ordinary unregister).
    pub references_dropped: usize,
}
