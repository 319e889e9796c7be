module demo/leakyservice

go 1.21
