//! Atomic file writes: a reader never sees half a file and a crash never leaves one.

use std::io::Write as _;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder (created if needed),
/// synced to disk and then renamed over `path` (`tempfile`'s `persist`). The file gets the
/// permissions a plain `File::create` gives (0o666 less the umask), not a temporary file's
/// owner-only ones.
///
/// # Errors
/// The folder or file cannot be written.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io(file.path(), e))?;
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io(file.path(), e))?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_ne!(
                mode & 0o044,
                0,
                "readable by others as File::create makes it: {mode:o}"
            );
        }
        let names = std::fs::read_dir(dir.path().join("sub")).unwrap().count();
        assert_eq!(names, 1);
        let error = write_atomically(&dir.path().join("sub/state.json/x"), b"").unwrap_err();
        assert!(error.to_string().contains("state.json"), "{error}");
    }
}
