#include "vhost/virtqueue.hpp"

#include <cerrno>
#include <cstring>
#include <string>

#include "common/atomics.hpp"

namespace interpart::vhost {

namespace {

// A 16-bit word of a ring in guest memory, read or written once (the guest writes it too).
std::uint16_t load16(const std::byte* p) { return std::atomic_ref(*reinterpret_cast<std::uint16_t*>(const_cast<std::byte*>(p))).load(std::memory_order_relaxed); }
void store16(std::byte* p, std::uint16_t v) { std::atomic_ref(*reinterpret_cast<std::uint16_t*>(p)).store(v, std::memory_order_relaxed); }

}  // namespace

Result<void> SplitQueue::configure(const GuestMemory* mem, std::uint32_t num, std::uint64_t desc_uva, std::uint64_t avail_uva,
                                   std::uint64_t used_uva, bool event_idx) {
  desc_ = nullptr;
  if (num == 0 || num > kMaxQueueSize || (num & (num - 1)) != 0) return make_error(EINVAL, "queue size " + std::to_string(num) + " (a power of two up to 32768)");
  if (!mem) return make_error(EINVAL, "ring addresses before a memory table");
  auto* desc = mem->frontend(desc_uva, 16ull * num);
  auto* avail = mem->frontend(avail_uva, 4 + 2ull * num + 2);
  auto* used = mem->frontend(used_uva, 4 + 8ull * num + 2);
  if (!desc || !avail || !used) return make_error(EFAULT, "a ring lies outside guest memory");
  if (reinterpret_cast<std::uintptr_t>(desc) % 16 || reinterpret_cast<std::uintptr_t>(avail) % 2 || reinterpret_cast<std::uintptr_t>(used) % 4)
    return make_error(EINVAL, "misaligned ring");
  mem_ = mem;
  num_ = num;
  event_idx_ = event_idx;
  desc_ = reinterpret_cast<const VringDesc*>(desc);
  avail_ = avail;
  used_ = used;
  signalled_used_ = used_idx_;
  return {};
}

bool SplitQueue::has_available() const { return avail_idx().load(std::memory_order_acquire) != last_avail_; }

int SplitQueue::pop(Chain* out, const char** why) {
  const std::uint16_t avail = avail_idx().load(std::memory_order_acquire);  // the ring entries after it
  if (avail == last_avail_) return 0;
  if (static_cast<std::uint16_t>(avail - last_avail_) > num_) return *why = "the available index ran more than a queue ahead", -1;
  const std::uint16_t head = load16(avail_ + 4 + 2 * (last_avail_ % num_));
  if (head >= num_) return *why = "an available head outside the descriptor table", -1;
  if (int r = walk(head, out, why); r < 0) return r;
  ++last_avail_;
  if (event_idx_) store16(used_ + 4 + 8 * num_, last_avail_);  // avail_event: kick once past what we took
  return 1;
}

int SplitQueue::walk(std::uint16_t head, Chain* out, const char** why) const {
  out->head = head;
  out->readable = out->count = 0;
  out->readable_bytes = out->writable_bytes = 0;
  const VringDesc* table = desc_;
  std::uint32_t table_n = num_, steps = 0;
  bool indirect = false;
  for (std::uint32_t i = head;;) {
    if (i >= table_n) return *why = "a descriptor index outside its table", -1;
    if (++steps > table_n) return *why = "a chain that loops or is longer than its table", -1;
    VringDesc d;
    std::memcpy(&d, &table[i], sizeof d);  // once: the guest may be changing it
    if (d.flags & kDescIndirect) {
      if (indirect) return *why = "an indirect table inside an indirect table", -1;
      if (d.flags & kDescNext) return *why = "an indirect descriptor with NEXT set", -1;
      if (d.len == 0 || d.len % sizeof(VringDesc) || d.len / sizeof(VringDesc) > kMaxQueueSize) return *why = "an indirect table of a bad length", -1;
      table = reinterpret_cast<const VringDesc*>(mem_->guest(d.addr, d.len));
      if (!table) return *why = "an indirect table outside guest memory", -1;
      table_n = d.len / sizeof(VringDesc), steps = 0, indirect = true, i = 0;
      continue;
    }
    if (d.len > 0) {
      const bool writable = d.flags & kDescWrite;
      if (!writable && out->count > out->readable) return *why = "a device-readable buffer after a device-writable one", -1;
      unsigned n = out->count;
      if (!mem_->guest_spans(d.addr, d.len, out->spans, kMaxChainSpans, &n)) return *why = "a buffer outside guest memory, or too many buffers", -1;
      out->count = n;
      if (writable) out->writable_bytes += d.len;
      else out->readable = n, out->readable_bytes += d.len;
    }
    if (!(d.flags & kDescNext)) return 0;
    i = d.next;
  }
}

void SplitQueue::push(std::uint16_t head, std::uint32_t len) {
  auto* e = reinterpret_cast<VringUsedElem*>(used_ + 4) + (used_idx_ % num_);
  const VringUsedElem v{head, len};
  std::memcpy(e, &v, sizeof v);
  ++used_idx_;
  used_idx().store(used_idx_, std::memory_order_release);  // the element before the index
}

bool SplitQueue::need_interrupt() {
  full_fence();  // our used index before the guest's used_event / flags (virtio 2.7.10)
  const std::uint16_t now = used_idx_, before = signalled_used_;
  signalled_used_ = now;
  if (now == before) return false;
  if (event_idx_) {
    const std::uint16_t used_event = load16(avail_ + 4 + 2 * num_);
    return static_cast<std::uint16_t>(now - used_event - 1) < static_cast<std::uint16_t>(now - before);
  }
  return !(load16(avail_) & kAvailNoInterrupt);
}

bool SplitQueue::enable_kicks() {
  if (event_idx_) store16(used_ + 4 + 8 * num_, last_avail_);
  else store16(used_, 0);
  full_fence();  // our request before the re-check of the available index
  return !has_available();
}

void SplitQueue::disable_kicks() {
  if (!event_idx_) store16(used_, kUsedNoNotify);
}

}  // namespace interpart::vhost
