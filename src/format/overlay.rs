//! Names overlayfs and OCI layers give meaning to: whiteout and opaque
//! markers in a layer's tree, and overlayfs's xattrs.

/// OCI whiteout: `.wh.NAME` deletes NAME from the layers below.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker: hides everything below its directory.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// overlayfs's xattrs as rootful overlayfs reads them.
pub const TRUSTED_OVERLAY: &[u8] = b"trusted.overlay.";
/// overlayfs's xattrs as rootless overlayfs (`-o userxattr`) reads them.
pub const USER_OVERLAY: &[u8] = b"user.overlay.";
/// Opaque directory, rootful form (value `y`).
pub const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// Opaque directory, rootless form (value `y`).
pub const USER_OVERLAY_OPAQUE: &[u8] = b"user.overlay.opaque";
/// Set on a directory holding whiteouts, so overlayfs hides them.
pub const OVERLAY_ORIGIN: &[u8] = b"trusted.overlay.origin";
