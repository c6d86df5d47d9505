//! dmaengine
