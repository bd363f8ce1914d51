#include "fabric/wire.hpp"

#include "common/fd_passing.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace interpart::wire {

int send_message(int sock, const void* buf, std::size_t len, const int* fds, std::size_t nfds) noexcept {
  const long n = send_with_fds(sock, buf, len, fds, nfds);
  if (n < 0) return static_cast<int>(n);
  return n == static_cast<long>(len) ? 0 : -EIO;
}

long receive_message(int sock, void* buf, std::size_t cap, std::vector<UniqueFd>* fds) noexcept {
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds->emplace_back(fd);  // owned even when we reject the message, so nothing leaks
    }
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return -EMSGSIZE;
  return n;
}

bool header_ok(const void* buf, std::size_t received) noexcept {
  if (received < sizeof(Header)) return false;
  Header h;
  std::memcpy(&h, buf, sizeof h);
  return h.magic == kMagic && h.version == kVersion && h.length == received;
}

}  // namespace interpart::wire
