// Built output has fixed file names (dist/index.html, dist/assets/dashboard.{js,css}): the binary
// embeds exactly these files (src/dashboard.rs) and revalidates them by ETag, so names need no
// content hash. The build is deterministic: scripts/web-build-check.sh rebuilds and compares.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
    rolldownOptions: {
      output: {
        entryFileNames: 'assets/dashboard.js',
        chunkFileNames: 'assets/[name].js',
        assetFileNames: 'assets/dashboard[extname]',
      },
    },
  },
});
