//! Public clients (`dmaengine_get` / `dmaengine_put`).

use crate::engine::Inner;
use crate::{Cap, CapMask, Channel};
use std::fmt;
use std::sync::Arc;

/// A registered user of public channels: the guard `dmaengine_get()` would return.
///
/// While it lives, every public channel of every device serving one of its capabilities
/// holds a reference on its device, so that device cannot be unregistered. Dropping the
/// guard is `dmaengine_put()`. Made by [`Engine::client`](crate::Engine::client).
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: u64,
    pub(crate) caps: CapMask,
}

impl Client {
    /// The capabilities this client asked for.
    pub fn capabilities(&self) -> CapMask {
        self.caps
    }

    /// This CPU's channel for `cap` (`dma_find_channel`), lock-free.
    #[inline]
    pub fn find_channel(&self, cap: Cap) -> Option<Channel> {
        self.inner.find_channel(cap)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("caps", &self.caps)
            .finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.inner.put_client(self.id);
    }
}
