//! Turns a parsed command into the call that does it.

use crate::{Command, ConvertMode, OverlayXattrsArg, StoreCommand, StoreXattrsArg, VerityCommand};

use super::CliResult;

/// Runs `command`.
pub fn run(command: Command) -> CliResult {
    match command {
        Command::Mount {
            paths,
            open,
            layers,
            overlay_xattrs,
            serve,
        } => super::mount(&super::MountArgs {
            paths,
            open,
            layers,
            overlay_xattrs: match overlay_xattrs {
                OverlayXattrsArg::Trusted => erofs_fuse::view::OverlayXattrs::Trusted,
                OverlayXattrsArg::User => erofs_fuse::view::OverlayXattrs::User,
            },
            serve,
        }),
        Command::Store { command } => match command {
            StoreCommand::Add {
                store,
                blobs,
                quiet,
            } => super::store_add(&store, &blobs, !quiet),
            StoreCommand::Serve {
                store,
                mountpoint,
                cache_size,
                overlay_xattrs,
                serve,
            } => {
                use erofs_fuse::view::OverlayXattrs;
                let overlay_xattrs = match overlay_xattrs {
                    StoreXattrsArg::Auto if erofs_fuse::fuse::privileged() => {
                        OverlayXattrs::Trusted
                    }
                    StoreXattrsArg::Auto | StoreXattrsArg::User => OverlayXattrs::User,
                    StoreXattrsArg::Trusted => OverlayXattrs::Trusted,
                };
                super::store_serve(&store, &mountpoint, cache_size, overlay_xattrs, &serve)
            }
        },
        Command::Inspect { image, json } => super::inspect(&image, json),
        Command::Ls {
            image,
            path,
            long,
            recursive,
        } => super::ls(&image, &path, long, recursive),
        Command::Cat { image, path } => super::cat(&image, &path),
        Command::Stat { image, path, json } => super::stat(&image, &path, json),
        Command::Manifest { image } => super::manifest(&image),
        Command::Fsck { image } => super::fsck(&image),
        Command::Extract {
            image,
            dest,
            no_owner,
            no_xattrs,
        } => super::extract(&image, &dest, !no_owner, !no_xattrs),
        Command::Convert {
            input,
            output,
            mode,
            aufs,
            append_tar,
            tar_out,
            implied_mtime,
            quiet,
        } => {
            let options = erofs_fuse::convert::ConvertOptions {
                mode: match mode {
                    ConvertMode::Index => erofs_fuse::convert::Mode::Index,
                    ConvertMode::Full => erofs_fuse::convert::Mode::Full,
                },
                aufs,
                append_tar,
                tar_out,
                progress: !quiet,
                implied_mtime,
            };
            super::convert(&input, &output, options)
        }
        Command::Verity { command } => match command {
            VerityCommand::Format {
                data,
                append: true,
                uuid,
                ..
            } => super::verity_append(&data, uuid.as_deref()),
            VerityCommand::Format {
                data,
                hash_file,
                append: false,
                no_superblock,
                salt,
                uuid,
                data_block_size,
                hash_block_size,
            } => super::verity_format(
                &data,
                &hash_file.unwrap_or_default(),
                &super::TreeArgs {
                    salt: salt.as_deref(),
                    data_blocks: None,
                    data_block_size,
                    hash_block_size,
                    superblock: !no_superblock,
                },
                uuid.as_deref(),
            ),
            VerityCommand::Verify {
                data,
                hash_file,
                root_hash,
                hash_offset,
                no_superblock,
                salt,
                data_blocks,
                data_block_size,
                hash_block_size,
            } => super::verity_verify(
                &data,
                &hash_file,
                &root_hash,
                hash_offset,
                &super::TreeArgs {
                    salt: salt.as_deref(),
                    data_blocks,
                    data_block_size,
                    hash_block_size,
                    superblock: !no_superblock,
                },
            ),
        },
    }
}
