//! The extra-device table and how a (device id, physical address) pair
//! resolves to bytes, as the kernel's `erofs_map_dev` does it.

use std::path::PathBuf;

use crate::device::{Access, Device};
use crate::error::{Error, Result};
use crate::format::{read_struct, DeviceSlot, DEVICE_SLOT_SIZE};

use super::superblock::SuperInfo;

/// One extra device as the image describes it and as it is backed here.
#[derive(Debug, Clone)]
pub struct ExtraDevice {
    /// The slot's tag (digest or uuid), up to the first NUL.
    pub tag: Vec<u8>,
    /// Size in blocks as recorded in the image.
    pub blocks: u64,
    /// Start in the unified address space, in blocks.
    pub uniaddr: u64,
    /// What serves the device's bytes.
    pub backing: Device,
}

/// The primary device and every extra device of an image.
#[derive(Debug, Clone)]
pub struct DeviceSet {
    /// The image itself.
    pub primary: Device,
    /// Extra devices in device-table order (device id 1 is `extra[0]`).
    pub extra: Vec<ExtraDevice>,
    /// True when no device paths were given, so device N lives inside the
    /// primary file at its slot's unified address (containerd's single-file
    /// tar-index layer; the kernel's "flatdev" mode).
    pub flat: bool,
    /// `device_id` bits that count (next power of two of devices, minus one).
    pub id_mask: u16,
    block_bits: u8,
}

impl DeviceSet {
    /// Reads the device table and attaches `given` devices in order, or the
    /// primary file's own tail when none are given.
    pub fn new(primary: Device, given: Vec<Device>, sb: &SuperInfo) -> Result<Self> {
        let count = usize::from(sb.extra_devices);
        if !given.is_empty() && given.len() != count {
            return Err(Error::Invalid(format!(
                "{} device(s) given but the image has {count} extra device(s)",
                given.len()
            )));
        }
        let bits = u32::from(sb.block_bits);
        let is_48bit = sb.blkaddr_mask() > u64::from(u32::MAX);
        let table = u64::from(sb.devt_slotoff) * DEVICE_SLOT_SIZE;
        let flat = given.is_empty();
        let mut given = given.into_iter();
        let mut extra = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let bytes = primary.slice_for(
                Access::Random,
                table + i * DEVICE_SLOT_SIZE,
                DEVICE_SLOT_SIZE,
            )?;
            let slot: &DeviceSlot =
                read_struct(bytes).ok_or_else(|| Error::corrupt("short device slot"))?;
            let hi = |v: u16| if is_48bit { u64::from(v) << 32 } else { 0 };
            let blocks = u64::from(slot.blocks_lo.get()) | hi(slot.blocks_hi.get());
            let uniaddr = u64::from(slot.uniaddr_lo.get()) | hi(slot.uniaddr_hi.get());
            let tag = slot
                .tag
                .split(|&b| b == 0)
                .next()
                .unwrap_or_default()
                .to_vec();
            let backing = match given.next() {
                Some(dev) => dev,
                None => {
                    let start = uniaddr.checked_shl(bits).filter(|s| *s <= primary.len());
                    let start = start.ok_or_else(|| {
                        Error::corrupt(format!(
                            "device {} starts at block {uniaddr}, past the end of {} and no --device was given for it",
                            i + 1,
                            primary.path().display()
                        ))
                    })?;
                    primary.subrange(start, primary.len() - start)?
                }
            };
            extra.push(ExtraDevice {
                tag,
                blocks,
                uniaddr,
                backing,
            });
        }
        let id_mask = ((count as u32 + 1).next_power_of_two() - 1) as u16;
        Ok(Self {
            primary,
            extra,
            flat,
            id_mask,
            block_bits: sb.block_bits,
        })
    }

    /// Where byte `pa` of device `device_id` lives: the backing device and the
    /// offset in it.
    pub fn resolve(&self, device_id: u16, pa: u64) -> Result<(&Device, u64)> {
        if device_id != 0 {
            let dev = self.extra.get(usize::from(device_id) - 1).ok_or_else(|| {
                Error::corrupt(format!(
                    "device id {device_id} but the image has {} extra device(s)",
                    self.extra.len()
                ))
            })?;
            return Ok((&dev.backing, pa));
        }
        if !self.flat {
            // Device 0 addresses inside another device's unified range belong
            // to that device (images merged by mkfs.erofs use them).
            for dev in &self.extra {
                if dev.uniaddr == 0 {
                    continue;
                }
                let start = dev.uniaddr << self.block_bits;
                let len = dev.blocks << self.block_bits;
                if pa >= start && pa - start < len {
                    return Ok((&dev.backing, pa - start));
                }
            }
        }
        Ok((&self.primary, pa))
    }

    /// The files behind every device, primary first.
    pub fn paths(&self) -> Vec<PathBuf> {
        std::iter::once(self.primary.path().to_path_buf())
            .chain(self.extra.iter().map(|d| d.backing.path().to_path_buf()))
            .collect()
    }
}
