//! The integration tests, as one binary in two tiers.
//!
//! `cargo test` runs the fast tier: the library against the fixtures,
//! hostile and malformed inputs, verity trees, conversion, the store's
//! layout and a short mutation sweep, none of which mounts anything.
//! `cargo test --features privileged` (what `scripts/test.sh` and `.ci/run`
//! run) adds the privileged and long tier: mounts through FUSE and the
//! kernel, rootless and multi-user attacks, faults and stress runs, and the
//! full mutation sweep. Tests of that tier skip loudly when the machine
//! lacks root, FUSE or kernel erofs, and fail instead under
//! `EROFS_FUSE_REQUIRE_PRIVILEGED=1`.

mod common;

// The fast tier (tests in it that mount are ignored without the feature).
mod cli_values;
mod compress_convert;
mod compressed;
mod convert;
mod convert_dir;
mod device_maps;
mod diff;
mod diff_hostile;
mod fault_maps;
mod fixtures;
mod fuzz_regressions;
mod gzran;
mod hostile_tars;
mod lazy;
mod malformed;
mod mutation;
mod nydus;
mod nydus_mutation;
mod nydus_registry;
mod pull;
mod store;
mod toc_lazy;
mod toc_store;
mod verity;
mod verity_verifier;
mod zinfo_device;

// The privileged and long tier.
#[cfg(feature = "privileged")]
mod attach;
#[cfg(feature = "privileged")]
mod changing_inputs;
#[cfg(feature = "privileged")]
mod compress_kernel;
#[cfg(feature = "privileged")]
mod diff_overlay;
#[cfg(feature = "privileged")]
mod faults;
#[cfg(feature = "privileged")]
mod host_writes;
#[cfg(feature = "privileged")]
mod kernel_agreement;
#[cfg(feature = "privileged")]
mod kernel_diff;
#[cfg(feature = "privileged")]
mod lazy_faults;
#[cfg(feature = "privileged")]
mod lazy_indexed;
#[cfg(feature = "privileged")]
mod lazy_mount;
#[cfg(feature = "privileged")]
mod mount;
#[cfg(feature = "privileged")]
mod mount_defaults;
#[cfg(feature = "privileged")]
mod nydus_mount;
#[cfg(feature = "privileged")]
mod overlay;
#[cfg(feature = "privileged")]
mod registry_client;
#[cfg(feature = "privileged")]
mod registry_pull;
#[cfg(feature = "privileged")]
mod rootless;
#[cfg(feature = "privileged")]
mod store_ahead;
#[cfg(feature = "privileged")]
mod store_refs;
#[cfg(feature = "privileged")]
mod toc_lazy_fetch;
#[cfg(feature = "privileged")]
mod toc_lazy_registry;
#[cfg(feature = "privileged")]
mod verity_mount;
