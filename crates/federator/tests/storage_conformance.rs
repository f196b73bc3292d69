//! The redb log store and state machine pass openraft's own storage conformance suite.

use openraft::testing::{StoreBuilder, Suite};
use switchyard_federator::raft::{LogStore, StateMachineStore, TypeConfig, open_storage};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), openraft::StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, sm) = open_storage(dir.path()).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_storage_passes_the_openraft_suite() {
    Suite::test_all(Builder).expect("storage conformance");
}
