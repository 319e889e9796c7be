module fixture/manyparked

go 1.21
