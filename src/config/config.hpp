// The config data set: a TOML file that declares a fabric (images, segments, channels), parsed
// into a validated model. Every mistake becomes a Diagnostic with file, line, column and field;
// parsing continues past a mistake so that all of them are reported at once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace interpart::config {

inline constexpr std::size_t kMaxImages = 64;  // access rights are 64-bit masks in the table
inline constexpr std::size_t kMaxNameLength = 31;

enum class Access : std::uint8_t { none, read_only, read_write };
// stream: a connection made at run time (listen/connect), not declared in the config.
enum class ChannelKind : std::uint8_t { queue = 1, pipe = 2, stream = 3 };

// Namespaces an image may ask to be started in (used by `interpart run`).
enum NamespaceBits : std::uint32_t {
  kNsUser = 1u << 0, kNsMount = 1u << 1, kNsNet = 1u << 2, kNsPid = 1u << 3, kNsIpc = 1u << 4, kNsUts = 1u << 5,
};

struct Location {
  int line = 0;
  int column = 0;
};

struct Image {
  std::string name;
  std::uint32_t id = 0;
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::uint32_t namespaces = 0;  // NamespaceBits
  // Shares no memory with other partitions: its channels and stream connections are mediated
  // (the manager's data mover copies between them) and it may not map a segment another
  // image maps, nor be a block device's client or I/O partition.
  bool mediated = false;
  // A virtual machine (`kind = "vm"`): its VMM (e.g. QEMU) runs as the image's uid and reaches
  // the devices it is a client of over vhost-user-blk sockets (Device::clients[].vhost_user);
  // it attaches no process to the fabric.
  bool vm = false;
  Location where;
};

struct Segment {
  std::uint32_t number = 0;
  std::uint64_t size = 0;
  bool hugepages = false;
  std::uint32_t owner = 0;           // image index
  std::vector<Access> access;        // per image index
  Location where;
};

struct Channel {
  std::string name;
  ChannelKind kind = ChannelKind::queue;
  std::uint32_t images[2] = {0, 0};  // image indices: side 0 and side 1
  std::uint32_t depth = 0;           // queue: messages the ring holds
  std::uint32_t max_message = 0;     // queue: largest message in bytes
  std::uint64_t capacity = 0;        // pipe: bytes the ring holds
  std::optional<std::uint32_t> segment;  // declared segment number to carve the rings from
  // Each side gets its own area, shared with the manager only; the data mover copies between them.
  bool mediated = false;
  Location where;
};

enum class Backend : std::uint8_t { file = 1, memory = 2, null = 3 };

// A device's quality of service for one client: a share by weight, and optional ceilings.
struct Qos {
  std::uint32_t weight = 1;
  std::uint64_t iops_limit = 0;       // 0: none
  std::uint64_t bandwidth_limit = 0;  // bytes per second, 0: none
};

struct DeviceClient {
  std::uint32_t image = 0;  // image index
  bool writable = false;
  Qos qos;
  std::string vhost_user;   // a VM client: the vhost-user socket path its VMM connects to
};

// A block device served by an I/O partition to client images (shared I/O driver).
// O_DIRECT for a file backend; values as stored in the allocation table.
enum class DirectIo : std::uint32_t { automatic = 0, on = 1, off = 2 };

struct Device {
  std::string name;
  std::uint32_t image = 0;      // the I/O partition's image index
  Backend backend = Backend::memory;
  std::string path;             // file backend: regular file or block device
  std::uint64_t size = 0;       // capacity in bytes (file: created sparse, or grown, to this size)
  std::uint32_t block_size = 4096;
  std::uint32_t queues = 1;     // per client attachment
  std::uint32_t depth = 64;     // requests in flight per queue (power of two)
  std::uint64_t data_size = 4u << 20;  // shared data area per client attachment
  DirectIo direct = DirectIo::automatic;  // file backend: O_DIRECT (auto: where the file system allows it)
  // Seconds a client waits for a request before it fails with ETIMEDOUT (no I/O partition
  // answering); 0: forever. The kernel's block layer default.
  std::uint32_t io_timeout = 30;
  std::vector<DeviceClient> clients;
  Location where;
};

// A server in one partition exported to others through a proxy: `interpart export` in its
// image connects to the real server (a Unix socket or a loopback TCP port) for each connection
// that `interpart import` carries over the fabric from an allowed client image.
struct Service {
  std::string name;
  std::uint32_t image = 0;            // image index of the exporting partition
  std::string unix_path;              // the server's Unix socket, or
  std::uint32_t tcp_port = 0;         // its loopback TCP port
  std::uint32_t port = 0;             // fabric port the export listens on
  std::vector<std::uint32_t> clients; // image indices allowed to import it
  Location where;
};

struct Fabric {
  std::string source;       // file name the model came from
  std::string name = "default";
  std::string socket;       // manager's Unix socket path
  std::optional<std::uint32_t> group;  // group of the socket; default: the manager's
  bool allow_root = false;  // uid 0 may attach as any image
  std::uint32_t streams = 64;                // stream connections open at once (slots in the table)
  // Shared memory the config may commit in the worst case (table::worst_case_memory); `up`
  // refuses a config above it. 0: half of this host's physical memory.
  std::uint64_t memory_limit = 0;
  std::uint64_t stream_buffer = 512u << 10;  // bytes each direction of a stream connection holds
  std::uint32_t mover_threads = 0;           // data mover threads for mediated channels (each serves all; mover.hpp);
                                             // 0: automatic, 2 where the manager may run on two CPUs or more, else 1
  std::vector<Image> images;
  std::vector<Segment> segments;
  std::vector<Channel> channels;
  std::vector<Device> devices;
  std::vector<Service> services;

  const Image* find_image(std::string_view name) const;
  int image_index(std::string_view name) const;  // -1 if unknown
  const Segment* find_segment(std::uint32_t number) const;
  const Service* find_service(std::string_view name) const;
};

struct Diagnostic {
  std::string file;
  Location where;
  std::string field;   // e.g. "channels[2].between"
  std::string reason;
  std::string to_string() const;  // "file:line:col: field: reason"
};

struct ParseResult {
  std::optional<Fabric> fabric;  // set only when there are no diagnostics
  std::vector<Diagnostic> errors;
};

// Parses and validates `text`; `source` names it in diagnostics.
ParseResult parse(std::string_view text, std::string_view source);
// Reads `path` (diagnostic if unreadable) and parses it.
ParseResult load_file(const std::string& path);
// The embedded default config data set (examples/default.toml).
std::string_view default_text();

// Parses "64KiB", "1 MiB", "4096", ... ; nullopt if malformed.
std::optional<std::uint64_t> parse_size(std::string_view s);

}  // namespace interpart::config
