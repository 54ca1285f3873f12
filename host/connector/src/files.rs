//! Disk `file` descriptors to host paths.
//!
//! A connector's `disk-access` names disk bytes as a path *relative to a
//! granted directory* (`{granted-dir: "lab", path: "disks/vm-1/disk-0.img"}`);
//! the administrator maps each granted directory name to a host directory per
//! instance (`[instances.<name>.dirs]` in `instances.toml`). The path a plugin
//! answers is untrusted: it may not leave its granted directory.

use std::path::{Component, Path, PathBuf};

use crate::{Connector, ConnectorError, DiskLocation, FileLocation};

/// The host path of a `file` location answered by `connector`.
///
/// Fails with [`ConnectorError::InvalidInput`] when the granted directory is
/// not granted to the instance, or when the path is absolute, empty, or
/// climbs out with `..`; with [`ConnectorError::Unsupported`] for locations
/// that are not files.
pub fn host_path(
    connector: &dyn Connector,
    location: &DiskLocation,
) -> Result<PathBuf, ConnectorError> {
    match location {
        DiskLocation::File(file) => file_path(connector, file),
        other => Err(ConnectorError::Unsupported(format!(
            "{}: disk location {} is not a file in a granted directory",
            connector.name(),
            location_kind(other)
        ))),
    }
}

fn location_kind(location: &DiskLocation) -> &'static str {
    match location {
        DiskLocation::File(_) => "file",
        DiskLocation::Nbd(_) => "nbd",
        DiskLocation::HttpsRange(_) => "https-range",
        DiskLocation::AzurePageBlob(_) => "azure-page-blob",
    }
}

fn file_path(connector: &dyn Connector, file: &FileLocation) -> Result<PathBuf, ConnectorError> {
    let root =
        connector
            .granted_dir(&file.granted_dir)
            .ok_or_else(|| ConnectorError::InvalidInput {
                field: "location.granted-dir".into(),
                message: format!(
                    "instance {} has no granted directory {:?}: grant it in instances.toml \
                 ([instances.{}.dirs] {} = \"/path\")",
                    connector.name(),
                    file.granted_dir,
                    connector.name(),
                    file.granted_dir
                ),
            })?;
    Ok(root.join(relative(&file.path)?))
}

/// Checks that `path` is relative and stays below its root.
pub fn relative(path: &str) -> Result<&Path, ConnectorError> {
    let p = Path::new(path);
    let bad = |why: &str| ConnectorError::InvalidInput {
        field: "location.path".into(),
        message: format!("{path:?} {why}"),
    };
    if path.is_empty() {
        return Err(bad("is empty"));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad("climbs out of its granted directory with `..`"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(
                    "is absolute; it must be relative to its granted directory",
                ))
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_their_granted_directory() {
        assert!(relative("disks/vm-1/disk-0.img").is_ok());
        assert!(relative("./images/a.img").is_ok());
        for bad in ["", "/etc/passwd", "../x", "images/../../x"] {
            let err = relative(bad).unwrap_err();
            assert!(
                matches!(&err, ConnectorError::InvalidInput { field, .. } if field == "location.path"),
                "{bad}: {err}"
            );
        }
    }
}
