// One vhost-user connection, back-end side (QEMU's docs/interop/vhost-user.rst): the front-end
// (a VMM, e.g. QEMU) shares the guest's memory and the virtqueues' rings and eventfds over a
// Unix socket; this class speaks that protocol and keeps what it set up. What the queues carry
// is the device's business (SessionHost): this file knows no virtio-blk.
// Every message is checked before anything is changed; a malformed one ends the connection
// (the front-end's device needs a reset), never the process.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/unique_fd.hpp"
#include "vhost/guest_memory.hpp"
#include "vhost/virtqueue.hpp"

namespace interpart::vhost {

// Requests (front-end to back-end) this back-end knows.
enum Request : std::uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kGetConfig = 24,
  kSetConfig = 25,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
};

inline constexpr std::uint32_t kFlagVersion = 0x1, kFlagReply = 0x4, kFlagNeedReply = 0x8;
inline constexpr std::uint64_t kVringNoFd = 1ull << 8;  // SET_VRING_KICK/CALL/ERR: no descriptor sent
inline constexpr unsigned kMaxConfigBytes = 256;

// Virtio feature bits the back-end side cares about.
inline constexpr std::uint64_t kFIndirectDesc = 1ull << 28, kFEventIdx = 1ull << 29, kFProtocolFeatures = 1ull << 30,
                               kFVersion1 = 1ull << 32;
// vhost-user protocol feature bits.
inline constexpr std::uint64_t kPMq = 1ull << 0, kPReplyAck = 1ull << 3, kPConfig = 1ull << 9, kPInflight = 1ull << 12;

struct MsgHeader {
  std::uint32_t request;
  std::uint32_t flags;
  std::uint32_t size;  // payload bytes after the header
};
struct VringState {
  std::uint32_t index;
  std::uint32_t num;
};
struct VringAddr {
  std::uint32_t index;
  std::uint32_t flags;
  std::uint64_t desc_user_addr;
  std::uint64_t used_user_addr;
  std::uint64_t avail_user_addr;
  std::uint64_t log_guest_addr;
};
struct InflightMsg {  // GET_INFLIGHT_FD / SET_INFLIGHT_FD
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
  std::uint16_t num_queues;
  std::uint16_t queue_size;
  std::uint32_t padding;
};
struct ConfigHeader {
  std::uint32_t offset;
  std::uint32_t size;
  std::uint32_t flags;
};
static_assert(sizeof(MsgHeader) == 12 && sizeof(VringState) == 8 && sizeof(VringAddr) == 40 && sizeof(ConfigHeader) == 12 &&
                  sizeof(InflightMsg) == 24,
              "vhost-user protocol layout");

// What the device behind a session provides.
class SessionHost {
 public:
  virtual ~SessionHost() = default;
  virtual std::uint64_t device_features() const = 0;  // virtio feature bits offered (ring and device bits)
  virtual std::uint32_t max_queues() const = 0;
  virtual void read_config(std::uint32_t offset, std::byte* out, std::uint32_t size) const = 0;
  // A queue starts or stops being served (kick descriptor, enable, stop).
  virtual void queue_changed(std::uint32_t q) = 0;
  // GET_VRING_BASE stops queue q: true while requests taken from it are still in flight; the
  // session then answers once the host calls queue_drained(q).
  virtual bool queue_busy(std::uint32_t q) = 0;
};

struct Vring {
  SplitQueue queue;
  std::uint32_t num = 0;
  VringAddr addr{};
  bool addr_set = false;
  std::uint16_t base = 0;
  UniqueFd kick, call, err;  // err: signalled when the guest breaks the queue (the VMM logs it)
  bool started = false;  // kick descriptor given, rings configured
  bool enabled = false;
  bool broken = false;   // the guest broke the ring: no longer served until the front-end resets it
};

class Session {
 public:
  Session(UniqueFd sock, SessionHost* host, std::string name);
  int fd() const { return sock_.get(); }
  const std::string& name() const { return name_; }

  // Reads and handles what the front-end sent. False when the connection ends: it went away,
  // or broke the protocol (`why` says what).
  bool on_readable(std::string* why);
  // Queue q has nothing in flight any more: a GET_VRING_BASE waiting for it is answered (and
  // the messages behind it handled). False as on_readable.
  bool queue_drained(std::uint32_t q, std::string* why);

  // A GET_VRING_BASE waits for a queue to drain: nothing more is read until then (the caller
  // stops watching for input meanwhile).
  bool waiting_for_drain() const { return pending_base_ >= 0; }
  std::uint32_t queues() const { return static_cast<std::uint32_t>(vrings_.size()); }
  Vring& vring(std::uint32_t q) { return vrings_[q]; }
  bool serving(std::uint32_t q) const {
    const Vring& v = vrings_[q];
    return v.started && v.enabled && !v.broken;
  }
  // The guest broke queue q (a descriptor outside its memory, a loop): stop serving it.
  void break_queue(std::uint32_t q, const char* why);
  void interrupt(std::uint32_t q);  // signals the guest's call eventfd
  std::uint64_t features() const { return acked_features_; }
  // The memory the rings and requests point into; in-flight requests keep a reference.
  const std::shared_ptr<GuestMemory>& memory() const { return memory_; }

 private:
  bool dispatch(const MsgHeader& h, const std::byte* payload, std::vector<UniqueFd>& fds, std::string* why);
  bool reply(const MsgHeader& h, const void* payload, std::uint32_t size, int fd = -1);
  bool ack(const MsgHeader& h, bool ok);
  // Configures queue q's rings from its addresses; `running`: only translated again (a new memory
  // table), its positions kept.
  bool start_queue(std::uint32_t q, std::string* why, bool running = false);
  void stop_queue(std::uint32_t q);

  UniqueFd sock_;
  SessionHost* host_;
  std::string name_;
  std::vector<Vring> vrings_;
  std::shared_ptr<GuestMemory> memory_;
  // The inflight regions (INFLIGHT_SHMFD): made by GET_INFLIGHT_FD, or given back by the VMM
  // after a restart with SET_INFLIGHT_FD. One region of inflight_queue_bytes(size) per queue.
  struct Inflight {
    void* base = nullptr;
    std::size_t bytes = 0;
    std::uint16_t queues = 0, queue_size = 0;
    ~Inflight();
  };
  std::unique_ptr<Inflight> inflight_;
  bool map_inflight(int fd, const InflightMsg& m, bool fresh, std::string* why);
  std::uint64_t acked_features_ = 0, protocol_features_ = 0;
  bool owner_ = false;
  std::vector<std::byte> buf_;  // the message being read (header, then payload)
  std::vector<UniqueFd> fds_;   // descriptors that came with it
  int pending_base_ = -1;       // a GET_VRING_BASE waiting for this queue to drain
  MsgHeader pending_header_{};
};

}  // namespace interpart::vhost
