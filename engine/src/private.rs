//! Private channels (`dma_request_channel` / `dma_release_channel`).

use crate::engine::Inner;
use crate::Channel;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A channel held exclusively; returned to its device on drop.
///
/// While any of its channels is held privately, a device is all-private: its channels
/// leave the per-CPU table. When the last one is released the device returns to the
/// public pool. Made by [`Engine::request_channel`](crate::Engine::request_channel).
pub struct PrivateChannel {
    pub(crate) inner: Arc<Inner>,
    pub(crate) channel: Channel,
}

impl PrivateChannel {
    /// Releases the channel now (`dma_release_channel`); the same as dropping it.
    pub fn release(self) {}
}

impl Deref for PrivateChannel {
    type Target = Channel;
    fn deref(&self) -> &Channel {
        &self.channel
    }
}

impl fmt::Debug for PrivateChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PrivateChannel")
            .field(&self.channel)
            .finish()
    }
}

impl Drop for PrivateChannel {
    fn drop(&mut self) {
        self.inner.release_private(&self.channel);
    }
}
