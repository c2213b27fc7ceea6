import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "happy-dom",
    include: ["test/**/*.test.ts", "e2e/**/*.test.mjs"],
    testTimeout: 10_000,
  },
});
