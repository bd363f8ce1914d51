// Sending a message with file descriptors (SCM_RIGHTS) on a Unix socket: the manager's wire
// protocol and the vhost-user back-end both do it.
#pragma once

#include <cstddef>

namespace interpart {

inline constexpr std::size_t kMaxPassedFds = 250;  // below the kernel's SCM_MAX_FD (253)

// sendmsg() of `len` bytes with `nfds` descriptors attached, retried on EINTR, never SIGPIPE
// (`flags` adds e.g. MSG_DONTWAIT). Returns the bytes sent, or -errno.
long send_with_fds(int sock, const void* buf, std::size_t len, const int* fds, std::size_t nfds, int flags = 0) noexcept;

}  // namespace interpart
