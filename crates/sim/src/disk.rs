//! A redb storage backend in memory that outlives the database opened on it, so a simulated
//! crash (dropping a replica) keeps exactly what the replica had written, and a restart reopens
//! it through the federator's real storage code.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::StorageBackend;

#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    open: Arc<AtomicBool>,
}

impl MemDisk {
    /// Opens a database on this disk. Panics if the previous one was not closed: two databases
    /// on one disk would corrupt it, which is a bug in the simulation, not in what it tests.
    pub fn open(&self) -> redb::Database {
        assert!(!self.open.swap(true, Ordering::SeqCst), "a database is still open on this disk");
        redb::Database::builder().create_with_backend(self.clone()).expect("opening the simulated disk")
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }
}

fn eof(offset: u64, len: usize, size: usize) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("read of {len} bytes at {offset} past the end ({size})"))
}

impl StorageBackend for MemDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.bytes.lock().expect("disk lock").len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let bytes = self.bytes.lock().expect("disk lock");
        let start = offset as usize;
        let end = start + out.len();
        if end > bytes.len() {
            return Err(eof(offset, out.len(), bytes.len()));
        }
        out.copy_from_slice(&bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.bytes.lock().expect("disk lock").resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut bytes = self.bytes.lock().expect("disk lock");
        let start = offset as usize;
        let end = start + data.len();
        if end > bytes.len() {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.open.store(false, Ordering::SeqCst);
        Ok(())
    }
}
