// A split virtqueue and a virtio-blk request as the driver reads them, with the input as the
// guest: guest memory (descriptor table, available ring, indirect tables, request headers) is
// the input's bytes, as are the queue size, ring addresses and base. Every chain pop() hands
// out must lie inside guest memory, with no more spans than a chain holds; parse_blk_request()
// must find its header and status there too. A malformed chain is refused, never followed.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "fuzz_input.hpp"
#include "vhost/guest_memory.hpp"
#include "vhost/virtio_blk.hpp"
#include "vhost/virtqueue.hpp"

using namespace interpart;
using namespace interpart::vhost;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size) {
  constexpr std::size_t kBytes = 64 * 1024;
  fuzz::Input in(bytes, size);
  UniqueFd fd(::memfd_create("guest", MFD_CLOEXEC));
  if (::ftruncate(fd.get(), kBytes) != 0) return 0;
  // Two regions of the one file: guest-physical 0 and 1 MiB (a range may cross between them
  // only where they are adjacent; here they are not).
  const MemoryRegionDesc regions[2] = {{0, kBytes / 2, 0x10000000, 0}, {1u << 20, kBytes / 2, 0x20000000, kBytes / 2}};
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup(fd.get()));
  fds.emplace_back(::dup(fd.get()));
  auto mem = GuestMemory::map(regions, 2, std::move(fds));
  if (!mem) return 0;
  void* view = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  auto* guest = static_cast<std::byte*>(view);
  const std::uint32_t num = 1u << (in.take<std::uint8_t>() % 9);  // 1..256
  const std::uint64_t desc = 0x10000000 + (in.take<std::uint16_t>() % 2048) * 16;
  const std::uint64_t avail = 0x10000000 + 8192 + (in.take<std::uint16_t>() % 1024) * 2;
  const std::uint64_t used = 0x20000000 + (in.take<std::uint16_t>() % 1024) * 4;
  SplitQueue q;
  const bool event_idx = in.take<std::uint8_t>() % 2;
  if (q.configure(mem->get(), num, desc, avail, used, event_idx)) {
    q.set_base(in.take<std::uint16_t>());
    in.take_bytes(guest, kBytes);  // the guest writes whatever it likes, rings included
    static Chain chain;
    static BlkRequest req;
    for (int i = 0; i < 64; ++i) {
      const char* why = "";
      const int r = q.pop(&chain, &why);
      if (r <= 0) break;
      fuzz::require(chain.count <= kMaxChainSpans && chain.readable <= chain.count);
      for (unsigned k = 0; k < chain.count; ++k) {
        const auto* b = static_cast<const std::byte*>(chain.spans[k].iov_base);
        // Every span is inside one of the two regions' mappings of the file.
        const std::byte* base0 = (*mem)->guest(0, kBytes / 2);
        const std::byte* base1 = (*mem)->guest(1u << 20, kBytes / 2);
        const bool in0 = b >= base0 && b + chain.spans[k].iov_len <= base0 + kBytes / 2;
        const bool in1 = b >= base1 && b + chain.spans[k].iov_len <= base1 + kBytes / 2;
        fuzz::require(in0 || in1);
      }
      if (parse_blk_request(chain, &req)) {
        fuzz::require(req.data_count <= chain.count && req.status != nullptr);
        *req.status = 0;
        BlkSegment seg;
        (void)copy_blk_data(req, &seg, sizeof seg);
      }
      q.push(chain.head, 1);
      (void)q.need_interrupt();
    }
    (void)q.enable_kicks();
  }
  ::munmap(view, kBytes);
  return 0;
}
