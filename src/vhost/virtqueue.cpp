#include "vhost/virtqueue.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

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
  inflight_ = nullptr;
  return {};
}

bool SplitQueue::has_available() const { return !resubmit_.empty() || avail_idx().load(std::memory_order_acquire) != last_avail_; }

unsigned SplitQueue::start() {
  used_idx_ = used_idx().load(std::memory_order_acquire);
  signalled_used_ = used_idx_;
  resubmit_.clear();
  last_pop_ = -1;
  if (!inflight_) return 0;
  InflightHeader& h = *inflight_;
  InflightDesc* d = inflight_desc();
  if (h.version != 1 || h.desc_num != num_) {  // a fresh region, or one for another queue size
    std::memset(inflight_, 0, inflight_queue_bytes(num_));
    h.version = 1;
    h.desc_num = static_cast<std::uint16_t>(num_);
    h.used_idx = used_idx_;
    return 0;
  }
  // The last batch was published but its flags may not all have been cleared.
  if (h.used_idx != used_idx_) {
    const std::uint16_t batch = static_cast<std::uint16_t>(used_idx_ - h.used_idx);
    std::uint16_t i = h.last_batch_head;
    for (std::uint32_t k = 0; k < batch && k < num_ && i < num_; ++k) {
      d[i].inflight = 0;
      i = d[i].next;
    }
    h.used_idx = used_idx_;
  }
  std::vector<std::pair<std::uint64_t, std::uint16_t>> taken;
  for (std::uint32_t i = 0; i < num_; ++i)
    if (d[i].inflight == 1) taken.emplace_back(d[i].counter, static_cast<std::uint16_t>(i));
    else d[i].inflight = 0;
  std::sort(taken.begin(), taken.end());
  counter_ = 1;
  for (const auto& [counter, head] : taken) {
    resubmit_.push_back(head);
    counter_ = std::max(counter_, counter + 1);
  }
  last_avail_ = static_cast<std::uint16_t>(used_idx_ + resubmit_.size());
  return static_cast<unsigned>(resubmit_.size());
}

void SplitQueue::unpop() {
  if (last_pop_ <= -2) {
    resubmit_.push_front(static_cast<std::uint16_t>(-2 - last_pop_));
  } else if (last_pop_ >= 0) {
    --last_avail_;
    if (inflight_) inflight_desc()[last_pop_].inflight = 0;
  }
  last_pop_ = -1;
}

int SplitQueue::pop(Chain* out, const char** why) {
  if (!resubmit_.empty()) {
    const std::uint16_t head = resubmit_.front();
    resubmit_.pop_front();
    if (int r = walk(head, out, why); r < 0) return r;
    last_pop_ = -2 - head;
    return 1;
  }
  const std::uint16_t avail = avail_idx().load(std::memory_order_acquire);  // the ring entries after it
  if (avail == last_avail_) return 0;
  if (static_cast<std::uint16_t>(avail - last_avail_) > num_) return *why = "the available index ran more than a queue ahead", -1;
  const std::uint16_t head = load16(avail_ + 4 + 2 * (last_avail_ % num_));
  if (head >= num_) return *why = "an available head outside the descriptor table", -1;
  if (int r = walk(head, out, why); r < 0) return r;
  ++last_avail_;
  last_pop_ = head;
  if (inflight_) {
    InflightDesc& d = inflight_desc()[head];
    d.counter = counter_++;
    d.inflight = 1;
  }
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
  if (!inflight_) {
    used_idx().store(used_idx_, std::memory_order_release);  // the element before the index
    return;
  }
  // A batch of one, in the spec's order: list it, publish it, then clear its flag.
  InflightDesc& d = inflight_desc()[head];
  d.next = inflight_->last_batch_head;
  inflight_->last_batch_head = head;
  used_idx().store(used_idx_, std::memory_order_release);
  d.inflight = 0;
  inflight_->used_idx = used_idx_;
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
