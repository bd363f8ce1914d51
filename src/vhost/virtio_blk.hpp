// virtio-blk (virtio 1.x, 5.2) as the shared I/O driver serves it to a VM: the config space it
// offers and the request a chain carries. Layout only, no I/O: the driver turns a parsed request
// into backend operations on the guest's own buffers, so data moves once.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vhost/virtqueue.hpp"

namespace interpart::vhost {

enum BlkType : std::uint32_t { kBlkIn = 0, kBlkOut = 1, kBlkFlush = 4, kBlkGetId = 8, kBlkDiscard = 11, kBlkWriteZeroes = 13 };
enum BlkStatus : std::uint8_t { kBlkOk = 0, kBlkIoErr = 1, kBlkUnsupp = 2 };
inline constexpr std::uint64_t kBlkSizeMax = 1ull << 1, kBlkSegMax = 1ull << 2, kBlkRo = 1ull << 5, kBlkBlkSize = 1ull << 6,
                               kBlkFlushF = 1ull << 9, kBlkTopology = 1ull << 10, kBlkMq = 1ull << 12, kBlkDiscardF = 1ull << 13,
                               kBlkWriteZeroesF = 1ull << 14;
inline constexpr std::uint32_t kSectorBytes = 512;  // virtio-blk addresses in 512-byte sectors whatever the block size
inline constexpr std::uint32_t kBlkIdBytes = 20;

struct [[gnu::packed]] BlkConfig {
  std::uint64_t capacity;  // in 512-byte sectors
  std::uint32_t size_max;  // largest segment (VIRTIO_BLK_F_SIZE_MAX)
  std::uint32_t seg_max;   // segments per request (VIRTIO_BLK_F_SEG_MAX)
  std::uint16_t cylinders;
  std::uint8_t heads;
  std::uint8_t sectors;
  std::uint32_t blk_size;  // logical block size (VIRTIO_BLK_F_BLK_SIZE)
  std::uint8_t physical_block_exp;
  std::uint8_t alignment_offset;
  std::uint16_t min_io_size;  // in blocks
  std::uint32_t opt_io_size;  // in blocks
  std::uint8_t writeback;
  std::uint8_t unused0;
  std::uint16_t num_queues;
  std::uint32_t max_discard_sectors;
  std::uint32_t max_discard_seg;
  std::uint32_t discard_sector_alignment;
  std::uint32_t max_write_zeroes_sectors;
  std::uint32_t max_write_zeroes_seg;
  std::uint8_t write_zeroes_may_unmap;
  std::uint8_t unused1[3];
};
static_assert(sizeof(BlkConfig) == 60, "virtio-blk config layout");

struct BlkHeader {
  std::uint32_t type;
  std::uint32_t ioprio;
  std::uint64_t sector;
};
struct BlkSegment {  // discard, write-zeroes
  std::uint64_t sector;
  std::uint32_t num_sectors;
  std::uint32_t flags;  // bit 0: unmap
};
static_assert(sizeof(BlkHeader) == 16 && sizeof(BlkSegment) == 16, "virtio-blk request layout");

// A chain as a virtio-blk request: the header (the first 16 readable bytes), the data (the
// readable bytes after it for a write, the writable bytes before the status for a read), and the
// status byte (the last writable byte). The driver may split buffers anywhere (VERSION_1 implies
// any layout), so nothing here assumes one buffer per part.
struct BlkRequest {
  BlkHeader header;
  iovec data[kMaxChainSpans];
  unsigned data_count = 0;
  std::uint64_t data_bytes = 0;
  std::uint8_t* status = nullptr;
};

// False when the chain has no room for a header and a status byte (the request cannot even be
// failed: the caller breaks the queue).
inline bool parse_blk_request(const Chain& c, BlkRequest* r) {
  if (c.readable_bytes < sizeof(BlkHeader) || c.writable_bytes < 1) return false;
  // The header, from however many spans hold it.
  std::size_t got = 0;
  unsigned i = 0;
  std::size_t skip = 0;  // bytes of spans[i] the header took
  auto* hdr = reinterpret_cast<std::byte*>(&r->header);
  while (got < sizeof(BlkHeader)) {
    const std::size_t take = std::min(c.spans[i].iov_len, sizeof(BlkHeader) - got);
    std::memcpy(hdr + got, c.spans[i].iov_base, take);
    got += take;
    if (take == c.spans[i].iov_len) ++i, skip = 0;
    else skip = take;
  }
  // The status: the last writable byte.
  const iovec& last = c.spans[c.count - 1];
  r->status = static_cast<std::uint8_t*>(last.iov_base) + last.iov_len - 1;
  r->data_count = 0;
  r->data_bytes = 0;
  auto add = [&](void* base, std::size_t len) {
    if (len == 0) return;
    r->data[r->data_count++] = {base, len};
    r->data_bytes += len;
  };
  if (r->header.type == kBlkIn || r->header.type == kBlkGetId) {
    for (unsigned k = c.readable; k < c.count; ++k) add(c.spans[k].iov_base, c.spans[k].iov_len - (k == c.count - 1 ? 1 : 0));
  } else {
    for (unsigned k = i; k < c.readable; ++k)
      add(static_cast<std::byte*>(c.spans[k].iov_base) + (k == i ? skip : 0), c.spans[k].iov_len - (k == i ? skip : 0));
  }
  return true;
}

// Copies `n` bytes at the start of the request's data into `out` (discard segments); false if short.
inline bool copy_blk_data(const BlkRequest& r, void* out, std::size_t n) {
  if (r.data_bytes < n) return false;
  auto* o = static_cast<std::byte*>(out);
  for (unsigned k = 0; k < r.data_count && n > 0; ++k) {
    const std::size_t take = std::min(n, r.data[k].iov_len);
    std::memcpy(o, r.data[k].iov_base, take);
    o += take;
    n -= take;
  }
  return true;
}

}  // namespace interpart::vhost
