// A split virtqueue (virtio 1.x, 2.7) served from the device side: takes the chains the guest
// made available, as host spans in guest memory, and returns them on the used ring. The rings
// live in guest memory, written by a guest we do not trust: indices and descriptors are read
// once each, and a chain that points outside the memory table, loops, runs past the queue
// size, or nests indirect tables is refused (the queue is then broken, as a device that needs
// a reset: VIRTIO_CONFIG_S_NEEDS_RESET).
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <deque>

#include "vhost/guest_memory.hpp"

namespace interpart::vhost {

inline constexpr std::uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;
inline constexpr std::uint16_t kUsedNoNotify = 1, kAvailNoInterrupt = 1;
inline constexpr std::uint32_t kMaxQueueSize = 32768;  // virtio's limit for a split queue
inline constexpr unsigned kMaxChainSpans = 256;        // host spans of one chain (seg_max + header + status, with room)

struct VringDesc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};
struct VringUsedElem {
  std::uint32_t id;
  std::uint32_t len;
};
static_assert(sizeof(VringDesc) == 16 && sizeof(VringUsedElem) == 8, "virtio ring layout");

// One available chain: its head and its buffers in order, the device-readable ones first.
struct Chain {
  std::uint16_t head = 0;
  unsigned readable = 0;  // spans[0, readable): the device reads them
  unsigned count = 0;     // spans[readable, count): the device writes them
  iovec spans[kMaxChainSpans];
  std::uint64_t readable_bytes = 0, writable_bytes = 0;
};

// Inflight I/O tracking (vhost-user VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, split queues): one
// region per queue in a memfd the back-end makes and the VMM keeps, so that a restarted back-end
// finds which requests its predecessor had taken and not completed. Written by us, kept by the
// VMM: read back as untrusted.
struct InflightDesc {
  std::uint8_t inflight;  // 1: taken, not completed
  std::uint8_t padding[5];
  std::uint16_t next;     // the last batch of used descriptors, as a list
  std::uint64_t counter;  // the order they were taken in
};
struct InflightHeader {
  std::uint64_t features;
  std::uint16_t version;  // 1
  std::uint16_t desc_num;
  std::uint16_t last_batch_head;
  std::uint16_t used_idx;  // the used index once the last batch's inflight flags were cleared
};
static_assert(sizeof(InflightDesc) == 16 && sizeof(InflightHeader) == 16, "vhost-user inflight layout");
inline constexpr std::uint64_t inflight_queue_bytes(std::uint32_t num) { return (sizeof(InflightHeader) + sizeof(InflightDesc) * num + 63) / 64 * 64; }

class SplitQueue {
 public:
  // The ring addresses are the front-end's virtual addresses (VHOST_USER_SET_VRING_ADDR).
  // Fails when a ring does not lie inside `mem`, or `num` is not a power of two <= 32768.
  Result<void> configure(const GuestMemory* mem, std::uint32_t num, std::uint64_t desc_uva, std::uint64_t avail_uva,
                         std::uint64_t used_uva, bool event_idx);
  bool configured() const { return desc_ != nullptr; }
  std::uint32_t size() const { return num_; }

  // Where serving starts (SET_VRING_BASE) and where it stands (GET_VRING_BASE).
  void set_base(std::uint16_t last_avail) { last_avail_ = last_avail; }
  std::uint16_t last_avail() const { return last_avail_; }
  // Tracks what is in flight in `region` (inflight_queue_bytes(size()) bytes), or nothing.
  void set_inflight(std::byte* region) { inflight_ = reinterpret_cast<InflightHeader*>(region); }
  // Starts serving from the used index in the ring. With an inflight region: repairs its last
  // batch, and hands the requests it records as taken and not completed out again first, in the
  // order they were taken (the base is then the used index plus those). Returns how many.
  unsigned start();
  // Whether the guest made chains available that we have not taken.
  bool has_available() const;
  // Takes the next chain: 1, 0 when there is none, -1 when it is malformed (`why` says how; the
  // caller breaks the queue: the guest may have written anything).
  int pop(Chain* out, const char** why);
  void unpop();  // gives the chain pop() just took back (not admitted yet)
  // Returns a chain with `len` bytes written into its buffers, and publishes the used index.
  void push(std::uint16_t head, std::uint32_t len);
  // Whether the guest wants an interrupt for what push() published since the last call.
  bool need_interrupt();
  // Asks the guest to kick for new chains (before sleeping); false when chains came meanwhile.
  bool enable_kicks();
  void disable_kicks();  // (while polling)

 private:
  int walk(std::uint16_t head, Chain* out, const char** why) const;
  InflightDesc* inflight_desc() const { return reinterpret_cast<InflightDesc*>(inflight_ + 1); }
  std::atomic<std::uint16_t>& avail_idx() const { return *reinterpret_cast<std::atomic<std::uint16_t>*>(avail_ + 2); }
  std::atomic<std::uint16_t>& used_idx() const { return *reinterpret_cast<std::atomic<std::uint16_t>*>(used_ + 2); }

  const GuestMemory* mem_ = nullptr;
  std::uint32_t num_ = 0;
  bool event_idx_ = false;
  const VringDesc* desc_ = nullptr;
  std::byte* avail_ = nullptr;  // flags, idx, ring[num], used_event
  std::byte* used_ = nullptr;   // flags, idx, ring[num], avail_event
  std::uint16_t last_avail_ = 0;
  std::uint16_t used_idx_ = 0;        // ours (the guest's copy in used_ is written, never read back)
  std::uint16_t signalled_used_ = 0;  // used index at the last interrupt decision
  InflightHeader* inflight_ = nullptr;
  std::uint64_t counter_ = 1;
  std::deque<std::uint16_t> resubmit_;  // heads a previous back-end took and did not complete
  int last_pop_ = -1;                   // head of the last pop(), for unpop(); -2 - head: a resubmission
};

}  // namespace interpart::vhost
