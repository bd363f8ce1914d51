#include "vhost/session.hpp"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/fd_passing.hpp"
#include "common/log.hpp"

namespace interpart::vhost {

namespace {

constexpr std::uint32_t kMaxPayload = 4096;  // the largest message (GET_CONFIG, SET_MEM_TABLE) is far smaller
constexpr std::size_t kMaxHeldFds = 16;

const char* request_name(std::uint32_t r) {
  switch (r) {
    case kGetFeatures: return "GET_FEATURES";
    case kSetFeatures: return "SET_FEATURES";
    case kSetOwner: return "SET_OWNER";
    case kResetOwner: return "RESET_OWNER";
    case kSetMemTable: return "SET_MEM_TABLE";
    case kSetVringNum: return "SET_VRING_NUM";
    case kSetVringAddr: return "SET_VRING_ADDR";
    case kSetVringBase: return "SET_VRING_BASE";
    case kGetVringBase: return "GET_VRING_BASE";
    case kSetVringKick: return "SET_VRING_KICK";
    case kSetVringCall: return "SET_VRING_CALL";
    case kSetVringErr: return "SET_VRING_ERR";
    case kGetProtocolFeatures: return "GET_PROTOCOL_FEATURES";
    case kSetProtocolFeatures: return "SET_PROTOCOL_FEATURES";
    case kGetQueueNum: return "GET_QUEUE_NUM";
    case kSetVringEnable: return "SET_VRING_ENABLE";
    case kGetConfig: return "GET_CONFIG";
    case kSetConfig: return "SET_CONFIG";
    case kGetInflightFd: return "GET_INFLIGHT_FD";
    case kSetInflightFd: return "SET_INFLIGHT_FD";
    default: return "(unknown)";
  }
}

template <class T>
bool payload_as(const MsgHeader& h, const std::byte* p, T* out) {
  if (h.size != sizeof(T)) return false;
  std::memcpy(out, p, sizeof(T));
  return true;
}

}  // namespace

Session::Session(UniqueFd sock, SessionHost* host, std::string name) : sock_(std::move(sock)), host_(host), name_(std::move(name)) {
  vrings_.resize(host_->max_queues());
}

// Reads message by message: a message's descriptors come with its first bytes, so reading
// exactly up to each boundary gives each message its own.
bool Session::on_readable(std::string* why) {
  while (pending_base_ < 0) {
    std::size_t want = sizeof(MsgHeader) - std::min(buf_.size(), sizeof(MsgHeader));
    if (want == 0) {
      MsgHeader h;
      std::memcpy(&h, buf_.data(), sizeof h);
      if ((h.flags & 0x3) != kFlagVersion) return *why = "protocol version " + std::to_string(h.flags & 0x3) + " (this back-end speaks 1)", false;
      if (h.size > kMaxPayload) return *why = std::string(request_name(h.request)) + " with a " + std::to_string(h.size) + "-byte payload", false;
      want = sizeof h + h.size - buf_.size();
      if (want == 0) {
        std::vector<UniqueFd> fds = std::move(fds_);
        fds_.clear();
        std::vector<std::byte> msg = std::move(buf_);
        buf_.clear();
        if (!dispatch(h, msg.data() + sizeof h, fds, why)) return false;
        continue;  // (descriptors the request did not take close here)
      }
    }
    std::byte chunk[kMaxPayload + sizeof(MsgHeader)];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxHeldFds)];
    iovec iov{chunk, want};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(sock_.get(), &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return *why = n == 0 ? "the front-end closed the connection" : std::string("recvmsg: ") + std::strerror(errno), false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < k; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds_.emplace_back(fd);
      }
    }
    if (m.msg_flags & MSG_CTRUNC) return *why = "a message with more descriptors than any request carries", false;
    buf_.insert(buf_.end(), chunk, chunk + n);
  }
  return true;
}

bool Session::reply(const MsgHeader& req, const void* payload, std::uint32_t size, int fd) {
  MsgHeader h{req.request, kFlagVersion | kFlagReply, size};
  std::byte out[sizeof h + kMaxConfigBytes + sizeof(ConfigHeader)];
  if (size > sizeof out - sizeof h) return false;
  std::memcpy(out, &h, sizeof h);
  if (size) std::memcpy(out + sizeof h, payload, size);
  // Small, and the front-end waits for it: a full socket is waited for briefly, then the end.
  for (int tries = 0; tries < 100; ++tries) {
    const long n = send_with_fds(sock_.get(), out, sizeof h + size, &fd, fd >= 0 ? 1 : 0, MSG_DONTWAIT);
    if (n == static_cast<long>(sizeof h + size)) return true;
    if (n != -EAGAIN) return false;
    pollfd p{sock_.get(), POLLOUT, 0};
    ::poll(&p, 1, 10);
  }
  return false;
}

bool Session::ack(const MsgHeader& h, bool ok) {
  if (!(h.flags & kFlagNeedReply) || !(protocol_features_ & kPReplyAck)) return true;
  const std::uint64_t status = ok ? 0 : 1;
  return reply(h, &status, sizeof status);
}

bool Session::start_queue(std::uint32_t q, std::string* why, bool running) {
  Vring& v = vrings_[q];
  if (!v.addr_set || v.num == 0) return *why = "queue " + std::to_string(q) + " kicked before its size and addresses", false;
  if (auto r = v.queue.configure(memory_.get(), v.num, v.addr.desc_user_addr, v.addr.avail_user_addr, v.addr.used_user_addr,
                                 (acked_features_ & kFEventIdx) != 0);
      !r)
    return *why = "queue " + std::to_string(q) + ": " + r.error().message(), false;
  if (inflight_ && q < inflight_->queues && v.num == inflight_->queue_size)
    v.queue.set_inflight(static_cast<std::byte*>(inflight_->base) + q * inflight_queue_bytes(v.num));
  if (running) return true;  // (a running queue translated again: its positions and requests stand)
  v.queue.set_base(v.base);
  if (const unsigned again = v.queue.start(); again > 0)
    IP_LOG_INFO("%s: queue %u: %u request(s) a previous back-end had taken are served again", name_.c_str(), q, again);
  v.started = true;
  v.broken = false;
  // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as it starts.
  if (!(acked_features_ & kFProtocolFeatures)) v.enabled = true;
  host_->queue_changed(q);
  return true;
}

void Session::stop_queue(std::uint32_t q) {
  Vring& v = vrings_[q];
  if (!v.started) return;
  v.started = false;
  v.base = v.queue.last_avail();
  host_->queue_changed(q);
}

void Session::break_queue(std::uint32_t q, const char* why) {
  Vring& v = vrings_[q];
  if (v.broken) return;
  IP_LOG_WARN("%s: queue %u broken by the guest (%s); not served until the front-end resets it", name_.c_str(), q, why);
  v.broken = true;
  if (v.err) {
    const std::uint64_t one = 1;
    (void)!::write(v.err.get(), &one, sizeof one);
  }
  host_->queue_changed(q);
}

void Session::interrupt(std::uint32_t q) {
  Vring& v = vrings_[q];
  if (!v.call) return;
  const std::uint64_t one = 1;
  (void)!::write(v.call.get(), &one, sizeof one);
}

Session::Inflight::~Inflight() {
  if (base) ::munmap(base, bytes);
}

bool Session::map_inflight(int fd, const InflightMsg& m, bool fresh, std::string* why) {
  if (m.num_queues == 0 || m.num_queues > vrings_.size() || m.queue_size == 0 || m.queue_size > kMaxQueueSize || (m.queue_size & (m.queue_size - 1)))
    return *why = "inflight region for " + std::to_string(m.num_queues) + " queues of " + std::to_string(m.queue_size), false;
  const std::size_t bytes = m.num_queues * inflight_queue_bytes(m.queue_size);
  struct stat st {};
  if (!fresh && (::fstat(fd, &st) != 0 || m.mmap_offset != 0 || m.mmap_size < bytes || static_cast<std::uint64_t>(st.st_size) < bytes))
    return *why = "inflight region smaller than its queues need", false;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return *why = std::string("mmap of the inflight region: ") + std::strerror(errno), false;
  auto r = std::make_unique<Inflight>();
  r->base = p;
  r->bytes = bytes;
  r->queues = m.num_queues;
  r->queue_size = m.queue_size;
  inflight_ = std::move(r);
  return true;
}

bool Session::queue_drained(std::uint32_t q, std::string* why) {
  if (pending_base_ != static_cast<int>(q)) return true;
  pending_base_ = -1;
  const VringState st{q, vrings_[q].base};
  if (!reply(pending_header_, &st, sizeof st)) return *why = "the front-end does not read its answers", false;
  return on_readable(why);
}

bool Session::dispatch(const MsgHeader& h, const std::byte* p, std::vector<UniqueFd>& fds, std::string* why) {
  auto bad = [&](const std::string& what) {
    *why = std::string(request_name(h.request)) + ": " + what;
    return false;
  };
  auto queue_of = [&](std::uint32_t index, std::uint32_t* q) {
    if (index >= vrings_.size()) return false;
    *q = index;
    return true;
  };
  const std::uint64_t offered = host_->device_features() | kFProtocolFeatures;
  const std::uint64_t protocols = kPMq | kPReplyAck | kPConfig | kPInflight;
  switch (h.request) {
    case kGetFeatures:
      return reply(h, &offered, sizeof offered);
    case kSetFeatures: {
      std::uint64_t f;
      if (!payload_as(h, p, &f)) return bad("payload is not a u64");
      if (f & ~offered) return bad("features the back-end did not offer");
      acked_features_ = f;
      return ack(h, true);
    }
    case kGetProtocolFeatures:
      return reply(h, &protocols, sizeof protocols);
    case kSetProtocolFeatures: {
      std::uint64_t f;
      if (!payload_as(h, p, &f)) return bad("payload is not a u64");
      protocol_features_ = f & protocols;
      return ack(h, true);
    }
    case kGetQueueNum: {
      const std::uint64_t n = vrings_.size();
      return reply(h, &n, sizeof n);
    }
    case kSetOwner:
      owner_ = true;
      return ack(h, true);
    case kResetOwner:
      for (std::uint32_t q = 0; q < vrings_.size(); ++q) stop_queue(q);
      {
        const std::size_t n = vrings_.size();
        vrings_.clear();
        vrings_.resize(n);
      }
      for (std::uint32_t q = 0; q < vrings_.size(); ++q) host_->queue_changed(q);
      owner_ = false;
      return ack(h, true);
    case kSetMemTable: {
      struct {
        std::uint32_t nregions, padding;
      } head;
      if (h.size < sizeof head) return bad("short payload");
      std::memcpy(&head, p, sizeof head);
      if (head.nregions == 0 || head.nregions > GuestMemory::kMaxRegions || h.size != sizeof head + head.nregions * sizeof(MemoryRegionDesc))
        return bad("payload does not hold " + std::to_string(head.nregions) + " regions");
      if (fds.size() != head.nregions) return bad(std::to_string(fds.size()) + " descriptors for " + std::to_string(head.nregions) + " regions");
      MemoryRegionDesc regions[GuestMemory::kMaxRegions];
      std::memcpy(regions, p + sizeof head, head.nregions * sizeof(MemoryRegionDesc));
      auto mem = GuestMemory::map(regions, head.nregions, std::move(fds));
      fds.clear();
      if (!mem) {
        IP_LOG_WARN("%s: memory table refused: %s", name_.c_str(), mem.error().message().c_str());
        return ack(h, false);
      }
      memory_ = std::move(*mem);
      // Rings already running point into the old table: translated again.
      for (std::uint32_t q = 0; q < vrings_.size(); ++q)
        if (vrings_[q].started && !start_queue(q, why, /*running=*/true)) return false;
      IP_LOG_DEBUG("%s: guest memory %u region(s), %llu bytes", name_.c_str(), memory_->regions(),
                   static_cast<unsigned long long>(memory_->bytes()));
      return ack(h, true);
    }
    case kSetVringNum: {
      VringState s;
      std::uint32_t q;
      if (!payload_as(h, p, &s) || !queue_of(s.index, &q)) return bad("bad payload or queue index");
      if (s.num == 0 || s.num > kMaxQueueSize || (s.num & (s.num - 1))) return bad("queue size " + std::to_string(s.num));
      vrings_[q].num = s.num;
      return ack(h, true);
    }
    case kSetVringAddr: {
      VringAddr a;
      std::uint32_t q;
      if (!payload_as(h, p, &a) || !queue_of(a.index, &q)) return bad("bad payload or queue index");
      vrings_[q].addr = a;
      vrings_[q].addr_set = true;
      return ack(h, true);
    }
    case kSetVringBase: {
      VringState s;
      std::uint32_t q;
      if (!payload_as(h, p, &s) || !queue_of(s.index, &q) || s.num > 0xffff) return bad("bad payload or queue index");
      vrings_[q].base = static_cast<std::uint16_t>(s.num);
      return ack(h, true);
    }
    case kGetVringBase: {
      VringState s;
      std::uint32_t q;
      if (!payload_as(h, p, &s) || !queue_of(s.index, &q)) return bad("bad payload or queue index");
      stop_queue(q);
      vrings_[q].kick.reset();
      if (host_->queue_busy(q)) {  // answered by queue_drained()
        pending_base_ = static_cast<int>(q);
        pending_header_ = h;
        return true;
      }
      const VringState st{q, vrings_[q].base};
      return reply(h, &st, sizeof st);
    }
    case kSetVringKick:
    case kSetVringCall:
    case kSetVringErr: {
      std::uint64_t v;
      std::uint32_t q;
      if (!payload_as(h, p, &v) || !queue_of(static_cast<std::uint32_t>(v & 0xff), &q)) return bad("bad payload or queue index");
      UniqueFd fd;
      if (!(v & kVringNoFd)) {
        if (fds.size() != 1) return bad(std::to_string(fds.size()) + " descriptors (one expected)");
        fd = std::move(fds[0]);
        fds.clear();
      }
      if (h.request == kSetVringCall) vrings_[q].call = std::move(fd);
      else if (h.request == kSetVringErr) vrings_[q].err = std::move(fd);
      else if (h.request == kSetVringKick && vrings_[q].started) {
        // A new kick descriptor for a running queue: the host lets go of the old one first.
        vrings_[q].started = false;
        host_->queue_changed(q);
        vrings_[q].kick = std::move(fd);
        vrings_[q].started = true;
        host_->queue_changed(q);
      } else if (h.request == kSetVringKick) {
        vrings_[q].kick = std::move(fd);
        if (!start_queue(q, why)) return false;
      }
      return ack(h, true);
    }
    case kSetVringEnable: {
      VringState s;
      std::uint32_t q;
      if (!payload_as(h, p, &s) || !queue_of(s.index, &q)) return bad("bad payload or queue index");
      vrings_[q].enabled = s.num != 0;
      host_->queue_changed(q);
      return ack(h, true);
    }
    case kGetConfig: {
      ConfigHeader c;
      if (h.size < sizeof c) return bad("short payload");
      std::memcpy(&c, p, sizeof c);
      if (c.size > kMaxConfigBytes || c.offset > kMaxConfigBytes - c.size || h.size != sizeof c + c.size) return bad("config range or payload size");
      std::byte out[sizeof c + kMaxConfigBytes] = {};
      std::memcpy(out, &c, sizeof c);
      host_->read_config(c.offset, out + sizeof c, c.size);
      return reply(h, out, sizeof c + c.size);
    }
    case kSetConfig:
      return ack(h, true);
    case kGetInflightFd: {
      InflightMsg m;
      if (!payload_as(h, p, &m)) return bad("payload is not an inflight description");
      UniqueFd fd(::memfd_create("interpart-inflight", MFD_CLOEXEC));
      const std::size_t bytes = m.num_queues * inflight_queue_bytes(m.queue_size);
      if (!fd || m.num_queues == 0 || ::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return bad("cannot make the inflight region");
      std::string what;
      if (!map_inflight(fd.get(), m, true, &what)) return bad(what);
      for (std::uint32_t q = 0; q < m.num_queues; ++q) {
        auto* hdr = reinterpret_cast<InflightHeader*>(static_cast<std::byte*>(inflight_->base) + q * inflight_queue_bytes(m.queue_size));
        hdr->version = 1;
        hdr->desc_num = m.queue_size;
      }
      const InflightMsg out{bytes, 0, m.num_queues, m.queue_size, 0};
      return reply(h, &out, sizeof out, fd.get());
    }
    case kSetInflightFd: {
      InflightMsg m;
      if (!payload_as(h, p, &m) || fds.size() != 1) return bad("payload or descriptor");
      std::string what;
      if (!map_inflight(fds[0].get(), m, false, &what)) return bad(what);
      fds.clear();
      return ack(h, true);
    }  // (the writeback flag; this device's cache mode is the backend's)
    default:
      // A request this back-end never offered the feature for: answered "failed" where the
      // front-end asked for an answer, otherwise ignored.
      IP_LOG_WARN("%s: request %u (%s) not supported; ignored", name_.c_str(), h.request, request_name(h.request));
      return ack(h, false);
  }
}

}  // namespace interpart::vhost
