{
  "targets": [
    {
      "target_name": "obd_native",
      "sources": ["native/obd-native.c"],
      "cflags": ["-O3", "-Wall", "-Wextra"],
      "libraries": ["-llz4", "-lzstd", "-lm"]
    }
  ]
}
