//! The snapshotter's share of lamina's image store: layer dirs of committed
//! snapshots are held with store layer references (owner [`OWNER`]), so
//! `lamina gc` keeps them, `lamina pull` adopts them instead of unpacking
//! again, and the snapshotter never deletes a dir an image still uses.
//!
//! Releasing the last reference does not delete anything itself: it wakes a
//! background thread that runs the store's GC, the one place that removes
//! layer dirs (under the store's exclusive gc lock, so never under a pull
//! that is about to use the dir).

use std::sync::Arc;
use std::sync::mpsc;

use lamina_store::{Digest, Store};

use super::snapshots::{self, LayerStore};

/// The owner name of the snapshotter's layer references.
pub const OWNER: &str = "containerd-snapshotter";

/// [`LayerStore`] over lamina's image store.
pub struct StoreLayers {
    store: Arc<Store>,
    gc: mpsc::Sender<()>,
}

impl StoreLayers {
    /// Holds layers in `store`; starts the GC thread.
    pub fn new(store: Arc<Store>) -> Self {
        let (gc, wake) = mpsc::channel::<()>();
        let s = store.clone();
        std::thread::Builder::new()
            .name("lamina-gc".into())
            .spawn(move || {
                while wake.recv().is_ok() {
                    // Coalesce a burst of removals (containerd's GC removes
                    // snapshots one by one) into one collection.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    while wake.try_recv().is_ok() {}
                    match s.gc() {
                        Ok(report) => tracing::info!(
                            layers = report.layers_removed.len(),
                            blobs = report.blobs_removed.len(),
                            "store gc after snapshot removal"
                        ),
                        Err(e) => tracing::warn!("store gc after snapshot removal failed: {e}"),
                    }
                }
            })
            .expect("spawning the gc thread");
        StoreLayers { store, gc }
    }
}

fn digest(chain_id: &str) -> snapshots::Result<Digest> {
    Digest::parse(chain_id).map_err(|e| snapshots::Error::InvalidArgument(e.to_string()))
}

fn store_err(e: lamina_store::Error) -> snapshots::Error {
    snapshots::Error::Store(e.to_string())
}

impl LayerStore for StoreLayers {
    fn hold(
        &self,
        chain_id: &str,
        place: &mut dyn FnMut() -> snapshots::Result<()>,
    ) -> snapshots::Result<()> {
        let chain = digest(chain_id)?;
        let _lease = self.store.lease().map_err(store_err)?;
        self.store.add_layer_ref(OWNER, &chain).map_err(store_err)?;
        place()
    }

    fn release(&self, chain_id: &str) -> snapshots::Result<()> {
        let chain = digest(chain_id)?;
        self.store
            .remove_layer_ref(OWNER, &chain)
            .map_err(store_err)?;
        if !self.store.layer_used_by_images(&chain).map_err(store_err)? {
            let _ = self.gc.send(());
        }
        Ok(())
    }

    fn held(&self) -> snapshots::Result<Vec<String>> {
        Ok(self
            .store
            .layer_refs(OWNER)
            .map_err(store_err)?
            .into_iter()
            .map(|d| d.to_string())
            .collect())
    }
}
