// Config data set: the default parses; every class of mistake is reported with line and field;
// several mistakes are reported at once.
#include <gtest/gtest.h>

#include "config/config.hpp"
#include "helpers.hpp"

namespace interpart::config {
namespace {

// The diagnostics of `text`, one string each ("test.toml:L:C: field: reason").
std::vector<std::string> errors_of(const std::string& text) {
  auto r = parse(text, "test.toml");
  std::vector<std::string> out;
  for (const auto& d : r.errors) out.push_back(d.to_string());
  EXPECT_EQ(r.fabric.has_value(), r.errors.empty());
  return out;
}

::testing::AssertionResult has_error(const std::vector<std::string>& errs, const std::string& needle) {
  for (const auto& e : errs)
    if (e.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure() << "no diagnostic contains \"" << needle << "\"; got:";
  for (const auto& e : errs) r << "\n  " << e;
  return r;
}

TEST(Config, EmbeddedDefaultIsValid) {
  auto r = parse(default_text(), "default.toml");
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].to_string();
  EXPECT_EQ(r.fabric->images.size(), 3u);
  EXPECT_EQ(r.fabric->channels.size(), 3u);
  ASSERT_EQ(r.fabric->devices.size(), 1u);
  EXPECT_EQ(r.fabric->devices[0].backend, Backend::file);
}

TEST(Config, BasicTestConfigIsValid) {
  auto f = test::parse_or_die(test::basic_config());
  EXPECT_EQ(f.images[1].name, "b");
  EXPECT_EQ(f.segments[0].access[1], Access::read_only);
  EXPECT_EQ(f.segments[0].access[0], Access::read_write);
  EXPECT_EQ(f.channels[0].depth, 64u);
  EXPECT_EQ(f.channels[0].max_message, 4096u);
  EXPECT_EQ(f.channels[2].kind, ChannelKind::pipe);
}

TEST(Config, SyntaxErrorNamesLine) {
  auto e = errors_of("[fabric]\nname = \"x\"\nsocket = /nope\n");
  ASSERT_EQ(e.size(), 1u);
  EXPECT_TRUE(has_error(e, "test.toml:3:")) << e[0];
}

TEST(Config, UnknownImageInChannel) {
  auto e = errors_of(test::basic_config(R"(
[[channels]]
name = "x"
kind = "queue"
between = ["a", "nosuch"]
)"));
  EXPECT_TRUE(has_error(e, "channels[3].between: unknown image \"nosuch\""));
  EXPECT_TRUE(has_error(e, "test.toml:40:17:")) << e[0];
}

TEST(Config, DuplicateSegmentNumber) {
  auto e = errors_of(test::basic_config("[[segments]]\nnumber = 1\nsize = 4096\nowner = \"b\"\n"));
  EXPECT_TRUE(has_error(e, "segments[1].number: duplicate segment number 1 (first at line 17)"));
}

TEST(Config, SizeNotPageMultiple) {
  auto e = errors_of(test::basic_config("[[segments]]\nnumber = 2\nsize = 5000\nowner = \"b\"\n"));
  EXPECT_TRUE(has_error(e, "segments[1].size: 5000 is not a multiple of the page size"));
  auto h = errors_of(test::basic_config("[[segments]]\nnumber = 2\nsize = \"1MiB\"\nhugepages = true\nowner = \"b\"\n"));
  EXPECT_TRUE(has_error(h, "not a multiple of the huge page size"));
}

TEST(Config, ChannelImageWithoutAccessToItsSegment) {
  // Segment 1 is read-only for b: a channel placed there cannot work for b.
  auto e = errors_of(test::basic_config("[[channels]]\nname = \"c\"\nkind = \"pipe\"\nbetween = [\"a\", \"b\"]\nsegment = 1\n"));
  EXPECT_TRUE(has_error(e, "channels[3].segment: image \"b\" has no read-write access to segment 1"));
}

TEST(Config, ChannelsTooBigForTheirSegment) {
  auto e = errors_of(test::basic_config(
      "[[segments]]\nnumber = 2\nsize = 8192\nowner = \"a\"\naccess = { b = \"rw\" }\n"
      "[[channels]]\nname = \"c\"\nkind = \"pipe\"\nbetween = [\"a\", \"b\"]\nsegment = 2\n"));
  EXPECT_TRUE(has_error(e, "segment 2 has 8192 bytes but the channels placed in it need"));
}

TEST(Config, MoverThreadsAreAutomaticUnlessGivenAndBounded) {
  EXPECT_EQ(test::parse_or_die(test::basic_config()).mover_threads, 0u) << "0: automatic (Mover::automatic_threads)";
  const std::string head = "[fabric]\nname = \"x\"\nsocket = \"/tmp/x.sock\"\n";
  const std::string image = test::image_toml("a", 1);
  auto r = parse(head + "mover_threads = 3\n" + image, "t.toml");
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].to_string();
  EXPECT_EQ(r.fabric->mover_threads, 3u);
  auto e = errors_of(head + "mover_threads = 17\n" + image);
  EXPECT_TRUE(has_error(e, "test.toml:4:17: fabric.mover_threads: must be between 0 and 16, not 17"));
}

TEST(Config, UnknownKeyAndWrongType) {
  auto e = errors_of(test::basic_config("[[images]]\nname = \"c\"\nid = \"three\"\nuid = 0\ngid = 0\ncolour = \"red\"\n"));
  EXPECT_TRUE(has_error(e, "images[2].colour: unknown key"));
  EXPECT_TRUE(has_error(e, "images[2].id: must be an integer, not a string"));
}

TEST(Config, MissingRequiredAndDuplicates) {
  auto e = errors_of(test::basic_config("[[images]]\nname = \"a\"\nid = 1\ngid = 0\n"));
  EXPECT_TRUE(has_error(e, "images[2].name: duplicate image \"a\""));
  EXPECT_TRUE(has_error(e, "images[2].id: duplicate image id 1"));
  EXPECT_TRUE(has_error(e, "images[2].uid: missing (required)"));
}

TEST(Config, ReportsEveryMistakeAtOnce) {
  auto e = errors_of(R"([fabric]
name = "bad name!"
socket = "relative.sock"
bogus = 1
[[images]]
name = "a"
id = 0
uid = "no-such-user-here"
gid = 0
namespaces = ["net", "time"]
[[segments]]
number = 0
size = "lots"
owner = "z"
[[channels]]
name = "q"
kind = "mailbox"
between = ["a"]
)");
  EXPECT_GE(e.size(), 10u);
  EXPECT_TRUE(has_error(e, "test.toml:2:8: fabric.name"));
  EXPECT_TRUE(has_error(e, "fabric.socket: must be an absolute path"));
  EXPECT_TRUE(has_error(e, "fabric.bogus: unknown key"));
  EXPECT_TRUE(has_error(e, "images[0].id: must be between 1 and 65535"));
  EXPECT_TRUE(has_error(e, "unknown user \"no-such-user-here\""));
  EXPECT_TRUE(has_error(e, "unknown namespace \"time\""));
  EXPECT_TRUE(has_error(e, "segment 0 is the control segment"));
  EXPECT_TRUE(has_error(e, "\"lots\" is not a size"));
  EXPECT_TRUE(has_error(e, "segments[0].owner: unknown image \"z\""));
  EXPECT_TRUE(has_error(e, "kind: must be \"queue\" or \"pipe\""));
  EXPECT_TRUE(has_error(e, "between: must be an array of two image names"));
}

TEST(Config, QueueAndPipeFieldsDoNotMix) {
  auto e = errors_of(test::basic_config("[[channels]]\nname = \"c\"\nkind = \"pipe\"\nbetween = [\"a\", \"b\"]\ndepth = 3\n"
                                        "[[channels]]\nname = \"d\"\nkind = \"queue\"\nbetween = [\"b\", \"b\"]\ncapacity = 4096\n"));
  EXPECT_TRUE(has_error(e, "channels[3].depth: only queues have a depth"));
  EXPECT_TRUE(has_error(e, "channels[4].capacity: only pipes have a capacity"));
  EXPECT_TRUE(has_error(e, "channels[4].between: a channel connects two different images"));
}

std::string with_io(const std::string& devices) {
  return test::basic_config("[[images]]\nname = \"io\"\nid = 9\nuid = 0\ngid = 0\n" + devices);
}

TEST(Config, Devices) {
  auto f = test::parse_or_die(with_io(R"(
[[devices]]
name = "disk0"
image = "io"
backend = "memory"
size = "64MiB"
block_size = 512
queues = 2
depth = 32
clients = { a = "rw", b = "ro" }
qos = { a = { weight = 3, iops_limit = 1000, bandwidth_limit = "10MiB" } }
[[devices]]
name = "img"
image = "io"
backend = "file"
path = "/tmp/disk.img"
size = "1GiB"
direct = false
clients = { b = "rw" }
)"));
  ASSERT_EQ(f.devices.size(), 2u);
  EXPECT_EQ(f.devices[0].direct, DirectIo::automatic);
  EXPECT_EQ(f.devices[1].direct, DirectIo::off);
  const Device& d = f.devices[0];
  EXPECT_EQ(d.backend, Backend::memory);
  EXPECT_EQ(d.size, 64u << 20);
  EXPECT_EQ(d.block_size, 512u);
  EXPECT_EQ(d.queues, 2u);
  ASSERT_EQ(d.clients.size(), 2u);
  EXPECT_TRUE(d.clients[0].writable);
  EXPECT_FALSE(d.clients[1].writable);
  EXPECT_EQ(d.clients[0].qos.weight, 3u);
  EXPECT_EQ(d.clients[0].qos.bandwidth_limit, 10u << 20);
  EXPECT_EQ(f.devices[1].path, "/tmp/disk.img");
  EXPECT_EQ(f.devices[1].block_size, 4096u);
}

TEST(Config, DeviceMistakes) {
  auto e = errors_of(with_io(R"(
[[devices]]
name = "d"
image = "nosuch"
backend = "tape"
clients = { io = "rw", zz = "ro", a = "rwx" }
[[devices]]
name = "f"
image = "io"
backend = "file"
depth = 48
block_size = 1000
clients = {}
qos = { b = { weight = 2 } }
[[devices]]
name = "m"
image = "io"
backend = "memory"
size = 5000
direct = true
clients = { a = "rw" }
[[devices]]
name = "g"
image = "io"
backend = "file"
path = "/tmp/g.img"
size = 4096
direct = "sometimes"
clients = { a = "rw" }
)"));
  EXPECT_TRUE(has_error(e, "devices[0].image: unknown image \"nosuch\""));
  EXPECT_TRUE(has_error(e, "devices[0].backend: must be \"file\", \"memory\" or \"null\""));
  EXPECT_TRUE(has_error(e, "devices[0].clients.zz: unknown image"));
  EXPECT_TRUE(has_error(e, "devices[0].clients.a: must be \"rw\" or \"ro\""));
  EXPECT_TRUE(has_error(e, "devices[0].size: missing"));
  EXPECT_TRUE(has_error(e, "devices[1].path: missing"));
  EXPECT_TRUE(has_error(e, "devices[1].depth: 48 is not a power of two"));
  EXPECT_TRUE(has_error(e, "devices[1].block_size: must be between 512 and 65536") ||
              has_error(e, "devices[1].block_size: 1000 is not a power of two"));
  EXPECT_TRUE(has_error(e, "devices[1].clients: a device needs at least one client"));
  EXPECT_TRUE(has_error(e, "devices[1].qos.b: \"b\" is not a client of this device"));
  EXPECT_TRUE(has_error(e, "devices[2].size: 5000 is not a multiple of the block size 4096"));
  EXPECT_TRUE(has_error(e, "devices[2].direct: only the file backend has direct I/O"));
  EXPECT_TRUE(has_error(e, "devices[3].direct: must be true, false or \"auto\", not a string"));
  auto io = errors_of(with_io("[[devices]]\nname = \"d\"\nimage = \"io\"\nbackend = \"null\"\nsize = 4096\nclients = { io = \"rw\" }\n"));
  EXPECT_TRUE(has_error(io, "devices[0].clients.io: the I/O partition serves the device"));
}

TEST(Config, ParseSize) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("64KiB"), 65536u);
  EXPECT_EQ(parse_size("2 MiB"), 2u << 20);
  EXPECT_EQ(parse_size("1g"), 1u << 30);
  EXPECT_FALSE(parse_size("MiB"));
  EXPECT_FALSE(parse_size("12 parsecs"));
  EXPECT_FALSE(parse_size("99999999999999999999"));
}

TEST(Config, MissingFileIsReported) {
  auto r = load_file("/nonexistent/fabric.toml");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].to_string().find("/nonexistent/fabric.toml"), std::string::npos);
}

}  // namespace
}  // namespace interpart::config

namespace interpart::config {
namespace {
// Found by fuzz_config (fuzz/regressions/fuzz_config/): a device naming an image that does not
// parse left an index into an empty image table for the mediated-image check.
TEST(Config, ADeviceOfAnImageThatFailedIsAnErrorNotACrash) {
  auto r = parse(R"(
[fabric]
name = "x"
[[images]]
n = "typo"
[[devices]]
name = "d"
image = "io"
backend = "null"
size = "1MiB"
clients = { app = "rw" }
)", "fuzzed.toml");
  EXPECT_FALSE(r.fabric);
  EXPECT_FALSE(r.errors.empty());
}
}  // namespace
}  // namespace interpart::config

namespace interpart::config {
namespace {

TEST(Config, VmImagesAndTheirVhostUserSockets) {
  const std::string vm = "[[images]]\nname = \"vm1\"\nid = 20\nuid = \"self\"\ngid = \"self\"\nkind = \"vm\"\n";
  auto ok = parse(with_io(vm + R"(
[[devices]]
name = "d"
image = "io"
backend = "memory"
size = "1MiB"
clients = { a = "rw", vm1 = "ro" }
vhost_user = { vm1 = "/run/d-vm1.sock" }
)"),
                  "test.toml");
  ASSERT_TRUE(ok.errors.empty()) << ok.errors[0].to_string();
  const Fabric& f = *ok.fabric;
  EXPECT_TRUE(f.images[static_cast<std::size_t>(f.image_index("vm1"))].vm);
  EXPECT_FALSE(f.images[static_cast<std::size_t>(f.image_index("a"))].vm);
  ASSERT_EQ(f.devices[0].clients.size(), 2u);
  EXPECT_EQ(f.devices[0].clients[1].vhost_user, "/run/d-vm1.sock");
  EXPECT_TRUE(f.devices[0].clients[0].vhost_user.empty());

  auto e = errors_of(with_io(vm + "[[images]]\nname = \"vm2\"\nid = 21\nuid = \"self\"\ngid = \"self\"\nkind = \"vm\"\nmediated = true\n" +
                             "[[images]]\nname = \"x\"\nid = 22\nuid = \"self\"\ngid = \"self\"\nkind = \"container\"\n" + R"(
[[devices]]
name = "d"
image = "io"
backend = "memory"
size = "1MiB"
clients = { a = "rw", vm1 = "rw" }
vhost_user = { a = "/run/a.sock", b = "/run/b.sock" }
[[devices]]
name = "e"
image = "io"
backend = "memory"
size = "1MiB"
clients = { a = "rw", vm1 = "ro" }
vhost_user = { vm1 = "relative.sock" }
[[devices]]
name = "f"
image = "vm1"
backend = "memory"
size = "1MiB"
clients = { a = "rw" }
)"));
  EXPECT_TRUE(has_error(e, "images[4].kind: a VM image cannot be mediated"));
  EXPECT_TRUE(has_error(e, "images[5].kind: must be \"processes\" or \"vm\", not \"container\""));
  EXPECT_TRUE(has_error(e, "devices[0].vhost_user.a: \"a\" is not a VM image"));
  EXPECT_TRUE(has_error(e, "devices[0].vhost_user.b: \"b\" is not a client of this device"));
  EXPECT_TRUE(has_error(e, "devices[0].vhost_user.vm1: VM client \"vm1\" needs the path of its vhost-user socket"));
  EXPECT_TRUE(has_error(e, "devices[1].vhost_user.vm1: must be an absolute socket path"));
  EXPECT_TRUE(has_error(e, "devices[2].image: a VM image cannot be a device's I/O partition"));
}

}  // namespace
}  // namespace interpart::config
