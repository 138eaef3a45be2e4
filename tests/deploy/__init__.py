"""Installation and deployment: the lock, the built distribution, deploy/ artifacts."""
