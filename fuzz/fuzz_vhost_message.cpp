// The vhost-user back-end's message handling (vhost::Session) with the input as the front-end:
// a stream of messages with any request number, flags, size and payload, a memfd attached where
// the input says (memory tables, kick and call descriptors), read through a real socket pair in
// pieces of any length. A malformed message may end the connection, nothing else: the session
// must never crash, hang or map memory outside what it was given.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "common/fd_passing.hpp"
#include "fuzz_input.hpp"
#include "vhost/session.hpp"

using namespace interpart;
using namespace interpart::vhost;

namespace {

struct Host final : SessionHost {
  std::uint64_t device_features() const override { return kFVersion1 | kFIndirectDesc | kFEventIdx | 0x7fff; }
  std::uint32_t max_queues() const override { return 2; }
  void read_config(std::uint32_t, std::byte* out, std::uint32_t size) const override { std::memset(out, 0x5a, size); }
  void queue_changed(std::uint32_t) override {}
  bool queue_busy(std::uint32_t q) override { return busy && q == 0; }
  bool busy = false;
};

void drain(int fd) {
  char buf[4096];
  while (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size) {
  fuzz::Input in(bytes, size);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  UniqueFd vmm(sv[0]);
  Host host;
  host.busy = in.take<std::uint8_t>() % 4 == 0;
  Session s(UniqueFd(sv[1]), &host, "fuzz");
  UniqueFd mem(::memfd_create("guest", MFD_CLOEXEC));
  if (::ftruncate(mem.get(), 64 * 1024) != 0) return 0;
  bool alive = true;
  for (int step = 0; step < 64 && alive && !in.done(); ++step) {
    MsgHeader h{};
    h.request = in.take<std::uint8_t>() % 40;
    h.flags = in.take<std::uint8_t>() % 8 == 0 ? in.take<std::uint32_t>() : (kFlagVersion | (in.take<std::uint8_t>() & kFlagNeedReply));
    const std::uint16_t len = in.take<std::uint16_t>() % 600;
    h.size = in.take<std::uint8_t>() % 16 == 0 ? in.take<std::uint32_t>() : len;
    std::string msg(sizeof h + len, '\0');
    std::memcpy(msg.data(), &h, sizeof h);
    in.take_bytes(msg.data() + sizeof h, len);
    // A memory table that points at the memfd's real size now and then.
    if (h.request == kSetMemTable && len >= 40 && in.take<std::uint8_t>() % 2 == 0) {
      std::uint32_t n = 1;
      std::memcpy(msg.data() + sizeof h, &n, 4);
    }
    const std::uint8_t fds_wanted = in.take<std::uint8_t>() % 4;
    int fds[3];
    int nfds = 0;
    for (int i = 0; i < fds_wanted && i < 3; ++i) fds[nfds++] = i == 0 ? mem.get() : ::eventfd(0, EFD_CLOEXEC);
    // Sent in up to two pieces (the descriptors with the first).
    const std::size_t first = std::min<std::size_t>(msg.size(), 1 + in.take<std::uint16_t>() % msg.size());
    const bool sent = send_with_fds(vmm.get(), msg.data(), first, fds, static_cast<std::size_t>(nfds), MSG_DONTWAIT) >= 0;
    for (int i = 1; i < nfds; ++i) ::close(fds[i]);
    if (!sent) break;
    std::string why;
    alive = s.on_readable(&why);
    if (alive && first < msg.size()) {
      (void)!::send(vmm.get(), msg.data() + first, msg.size() - first, MSG_NOSIGNAL | MSG_DONTWAIT);
      alive = s.on_readable(&why);
    }
    drain(vmm.get());
    if (alive && host.busy && in.take<std::uint8_t>() % 2) {
      host.busy = false;
      alive = s.queue_drained(0, &why);
      drain(vmm.get());
    }
  }
  return 0;
}
